//! Trustee's provisioner "confdata" (pure, no I/O): what `GET /kbs/v0/provisioner/<path>`
//! releases (inside the JWE) for a VM the operator provisioned with
//! `POST /kbs/v0/provisioner/provision`:
//!
//! ```toml
//! version = "0.1.0"
//!
//! [data]
//! "io.cryptsetup.key.text.root" = "<random alphanumeric key>"
//! ```
//!
//! A volume's key is the text of `io.cryptsetup.key.text.<volume>`, used as the passphrase
//! bytes (and, for the clevis pin, as the 32-byte key of its JWE).

use zeroize::Zeroizing;

use super::FormatError;

const WHAT: &str = "provisioner confdata";

/// The key name prefix of a volume's LUKS passphrase.
pub(crate) const LUKS_KEY_PREFIX: &str = "io.cryptsetup.key.text.";

/// The largest confdata accepted (a few keys of a few dozen bytes each).
pub(crate) const MAX_CONFDATA: usize = 64 << 10;

/// The passphrase of `volume` in a confdata document.
pub fn luks_key(bytes: &[u8], volume: &str) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    if bytes.len() > MAX_CONFDATA {
        return Err(FormatError::TooMany {
            what: WHAT,
            count: bytes.len() as u64,
            max: MAX_CONFDATA as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| FormatError::invalid(WHAT, "not UTF-8"))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|_| FormatError::invalid(WHAT, "not a TOML document"))?;
    match doc.get("version").and_then(toml::Value::as_str) {
        Some("0.1.0") => {}
        Some(_) => return Err(FormatError::invalid(WHAT, "unsupported version")),
        None => return Err(FormatError::invalid(WHAT, "no version")),
    }
    let data = doc
        .get("data")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| FormatError::invalid(WHAT, "no [data] table"))?;
    let name = format!("{LUKS_KEY_PREFIX}{volume}");
    let key = data
        .get(&name)
        .ok_or_else(|| FormatError::invalid(WHAT, format!("no {name} in [data]")))?;
    let key = key
        .as_str()
        .ok_or_else(|| FormatError::invalid(WHAT, format!("{name} is not a string")))?;
    if key.is_empty() {
        return Err(FormatError::invalid(WHAT, format!("{name} is empty")));
    }
    Ok(Zeroizing::new(key.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document the real provisioner plugin stored for a provisioned VM (observed with
    /// Trustee 78962cd, `../shared/tools/trustee-kbs-78962cd/PROVENANCE.md`).
    const REAL: &str = "version = \"0.1.0\"\n\n[data]\n\"io.cryptsetup.key.text.root\" = \"YFjYF00dUOeezkH2ey5jLXNwija5S6a6\"\n";

    #[test]
    fn real_confdata_gives_the_root_key() {
        let k = luks_key(REAL.as_bytes(), "root").unwrap();
        assert_eq!(&k[..], b"YFjYF00dUOeezkH2ey5jLXNwija5S6a6");
    }

    #[test]
    fn malformed_confdata_is_a_typed_error() {
        for (doc, why) in [
            (
                "[data]\n\"io.cryptsetup.key.text.root\" = \"k\"\n",
                "no version",
            ),
            ("version = \"9\"\n[data]\n", "unsupported version"),
            ("version = \"0.1.0\"\n", "no [data]"),
            (
                "version = \"0.1.0\"\n[data]\nx = \"y\"\n",
                "no io.cryptsetup.key.text.root",
            ),
            (
                "version = \"0.1.0\"\n[data]\n\"io.cryptsetup.key.text.root\" = 3\n",
                "not a string",
            ),
            (
                "version = \"0.1.0\"\n[data]\n\"io.cryptsetup.key.text.root\" = \"\"\n",
                "empty",
            ),
            ("\u{0}\u{1}", "TOML"),
        ] {
            let e = luks_key(doc.as_bytes(), "root").unwrap_err().to_string();
            assert!(e.contains(why), "{doc:?}: {e}");
        }
        assert!(luks_key(&[0xff, 0xfe], "root").is_err());
        assert!(luks_key(&vec![b'a'; MAX_CONFDATA + 1], "root").is_err());
    }
}
