//! The vendor roots an operator's offline verification trusts by default: AMD's ARKs for
//! Milan, Genoa and Turin (with their ASK and ASVK intermediates) and Intel's SGX Root CA.
//! Where each comes from and its fingerprint: `verify/roots/PROVENANCE.md`.

use x509_cert::Certificate;

use crate::x509;

const AMD: [&[u8]; 3] = [
    include_bytes!("../roots/amd-milan.pem"),
    include_bytes!("../roots/amd-genoa.pem"),
    include_bytes!("../roots/amd-turin.pem"),
];
const INTEL_SGX_ROOT_CA: &[u8] = include_bytes!("../roots/intel-sgx-root-ca.pem");

/// Trust anchors (self-signed) and the intermediates they signed.
#[derive(Clone, Debug, Default)]
pub struct Roots {
    /// Self-signed roots a chain must end in.
    pub anchors: Vec<Certificate>,
    /// Certificates usable between a leaf and an anchor.
    pub intermediates: Vec<Certificate>,
}

impl Roots {
    /// Sorts `certs` into anchors (self-issued) and intermediates.
    pub fn from_certs(certs: Vec<Certificate>) -> Roots {
        let mut roots = Roots::default();
        for cert in certs {
            if cert.tbs_certificate.subject == cert.tbs_certificate.issuer {
                roots.anchors.push(cert);
            } else {
                roots.intermediates.push(cert);
            }
        }
        roots
    }
}

fn pinned(pems: &[&[u8]]) -> Roots {
    let certs = pems
        .iter()
        // The files are compiled in and pinned by the tests below; a parse failure would be a
        // build of a different file, so it yields no roots and every chain check fails.
        .flat_map(|pem| x509::pem_chain(pem).unwrap_or_default())
        .collect();
    Roots::from_certs(certs)
}

/// AMD's ARKs (Milan, Genoa, Turin) with the ASKs and ASVKs they signed.
pub fn amd() -> Roots {
    pinned(&AMD)
}

/// Intel's SGX Root CA (PCK chains of SGX and TDX quotes end in it).
pub fn intel() -> Roots {
    pinned(&[INTEL_SGX_ROOT_CA])
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use x509_cert::der::Encode;

    fn fingerprints(roots: &[Certificate]) -> Vec<(String, String)> {
        roots
            .iter()
            .map(|c| {
                let der = c.to_der().unwrap();
                (x509::subject(c), hex::encode(Sha256::digest(der)))
            })
            .collect()
    }

    /// The fingerprints in verify/roots/PROVENANCE.md.
    #[test]
    fn pinned_roots_are_the_vendor_certificates() {
        let amd = amd();
        let anchors = fingerprints(&amd.anchors);
        let expected = [
            (
                "ARK-Milan",
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            ),
            (
                "ARK-Genoa",
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            ),
            (
                "ARK-Turin",
                "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
            ),
        ];
        assert_eq!(anchors.len(), 3, "{anchors:?}");
        for ((subject, fp), (cn, want)) in anchors.iter().zip(expected) {
            assert!(subject.contains(cn), "{subject}");
            assert_eq!(fp, want, "{cn}");
        }
        let intermediates: Vec<String> = fingerprints(&amd.intermediates)
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        for want in [
            "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
            "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
            "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
            "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
            "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        ] {
            assert!(intermediates.contains(&want.to_string()), "{want}");
        }
        let intel = fingerprints(&intel().anchors);
        assert_eq!(
            intel,
            [(
                "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA".to_string(),
                "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3".to_string()
            )]
        );
    }
}
