//! The ephemeral TEE key of one broker session.
//!
//! A fresh EC P-256 key per session (`ECDH-ES+A256KW`, the key type Trustee's guest side uses
//! by default; P-384 is not accepted by the KBS). Its public half is bound into the evidence,
//! so a secret the broker wraps to it is readable only by this process, this boot. The
//! private scalar is zeroized when the key is dropped (p256's `SecretKey` does that itself).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kbs_types::TeePubKey;
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ToEncodedPoint};
use p256::{NistP256, PublicKey, SecretKey};
use rand_core::OsRng;
use zeroize::Zeroizing;

/// The JOSE `alg` this key is for.
pub(crate) const KEY_ALG: &str = "ECDH-ES+A256KW";

/// A peer public key that is not a valid P-256 point.
#[derive(Debug, thiserror::Error)]
#[error("peer public key is not a valid P-256 point")]
pub(crate) struct InvalidPoint;

/// The ephemeral key pair of one session.
pub struct EphemeralKey {
    secret: SecretKey,
}

impl EphemeralKey {
    /// Generate a key from the OS RNG.
    pub fn generate() -> EphemeralKey {
        EphemeralKey {
            secret: SecretKey::random(&mut OsRng),
        }
    }

    /// The public key as the KBS `tee-pubkey` JWK.
    pub fn tee_pubkey(&self) -> TeePubKey {
        let point = self.secret.public_key().to_encoded_point(false);
        // An uncompressed point of a valid key always has both coordinates.
        let x = point
            .x()
            .map(|x| URL_SAFE_NO_PAD.encode(x))
            .unwrap_or_default();
        let y = point
            .y()
            .map(|y| URL_SAFE_NO_PAD.encode(y))
            .unwrap_or_default();
        TeePubKey::EC {
            crv: "P-256".to_owned(),
            alg: KEY_ALG.to_owned(),
            x,
            y,
        }
    }

    /// ECDH with a peer's public point given by its affine coordinates; returns Z.
    pub(crate) fn agree(&self, x: &[u8], y: &[u8]) -> Result<Zeroizing<Vec<u8>>, InvalidPoint> {
        if x.len() != 32 || y.len() != 32 {
            return Err(InvalidPoint);
        }
        let encoded = EncodedPoint::<NistP256>::from_affine_coordinates(x.into(), y.into(), false);
        let peer = Option::<PublicKey>::from(PublicKey::from_encoded_point(&encoded))
            .ok_or(InvalidPoint)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_has_32_byte_coordinates_and_rejects_off_curve_points() {
        let k = EphemeralKey::generate();
        let TeePubKey::EC { crv, alg, x, y } = k.tee_pubkey() else {
            panic!("not EC");
        };
        assert_eq!((crv.as_str(), alg.as_str()), ("P-256", KEY_ALG));
        let (x, y) = (
            URL_SAFE_NO_PAD.decode(x).unwrap(),
            URL_SAFE_NO_PAD.decode(y).unwrap(),
        );
        assert_eq!((x.len(), y.len()), (32, 32));
        assert!(k.agree(&x, &y).is_ok());
        let mut bad = y.clone();
        bad[31] ^= 1;
        assert!(k.agree(&x, &bad).is_err());
        assert!(k.agree(&x[..31], &y).is_err());
    }
}
