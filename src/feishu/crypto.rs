//! AES-256-CBC body decryption and the `X-Lark-Signature` check (feishu-protocol.md §1.3–1.4).
//!
//! Decryption: `key = SHA-256(Encrypt Key)`, wire value `base64(iv || ciphertext)`, strict PKCS#7.
//! Signature: lowercase hex `SHA-256(timestamp || nonce || Encrypt Key || raw body)` — plain
//! SHA-256, not HMAC — compared in constant time.

use aes::Aes256;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{ConstantTimeEq, ConstantTimeLess};

const BLOCK: usize = 16;

/// Why an `encrypt` value could not be decrypted. Only ever shown to a caller whose signature
/// verified (ARCHITECTURE.md invariant 9: no padding oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("the encrypt field is not valid base64")]
    Base64,
    #[error("the encrypted payload is too short or not a whole number of AES blocks")]
    Length,
    #[error("the decrypted payload has invalid PKCS#7 padding")]
    Padding,
}

/// The Encrypt Key of a Feishu app, with the AES key derived from it.
pub struct EncryptKey {
    secret: SecretString,
    aes_key: [u8; 32],
}

impl std::fmt::Debug for EncryptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptKey([REDACTED])")
    }
}

impl EncryptKey {
    /// Derives the AES key (`SHA-256` of the key's UTF-8 bytes).
    pub fn new(secret: SecretString) -> Self {
        let aes_key = Sha256::digest(secret.expose_secret().as_bytes()).into();
        Self { secret, aes_key }
    }

    /// Decrypts the value of a body's `encrypt` field.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, DecryptError> {
        let mut data = STANDARD.decode(encrypt).map_err(|_| DecryptError::Base64)?;
        if data.len() < 2 * BLOCK || data.len() % BLOCK != 0 {
            return Err(DecryptError::Length);
        }
        let (iv, body) = data.split_at_mut(BLOCK);
        let iv: [u8; BLOCK] = (&*iv).try_into().map_err(|_| DecryptError::Length)?;
        cbc::Decryptor::<Aes256>::new(&self.aes_key.into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(body)
            .map_err(|_| DecryptError::Length)?;
        let plain_len = pkcs7_unpadded_len(body).ok_or(DecryptError::Padding)?;
        data.drain(..BLOCK);
        data.truncate(plain_len);
        Ok(data)
    }

    /// Encrypts `plaintext` the way Feishu does, with the given IV. Real traffic uses a random
    /// IV per message; `simulate` and the tests use this to produce deliveries.
    pub fn encrypt(&self, plaintext: &[u8], iv: [u8; BLOCK]) -> String {
        let pad = BLOCK - plaintext.len() % BLOCK;
        let mut buf = Vec::with_capacity(BLOCK + plaintext.len() + pad);
        buf.extend_from_slice(&iv);
        buf.extend_from_slice(plaintext);
        buf.resize(BLOCK + plaintext.len() + pad, pad as u8);
        let len = buf.len() - BLOCK;
        cbc::Encryptor::<Aes256>::new(&self.aes_key.into(), &iv.into())
            .encrypt_padded_mut::<NoPadding>(&mut buf[BLOCK..], len)
            .expect("buffer is a whole number of blocks");
        STANDARD.encode(buf)
    }

    /// The `X-Lark-Signature` Feishu sends for a body.
    pub fn signature(&self, timestamp: &str, nonce: &str, body: &[u8]) -> String {
        let mut hash = Sha256::new();
        hash.update(timestamp.as_bytes());
        hash.update(nonce.as_bytes());
        hash.update(self.secret.expose_secret().as_bytes());
        hash.update(body);
        hex::encode(hash.finalize())
    }

    /// Whether `signature` is the right one for this body, compared in constant time.
    /// Uppercase hex is accepted too: the comparison is over the decoded digest.
    pub fn verify_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        body: &[u8],
        signature: &str,
    ) -> bool {
        let expected = self.signature(timestamp, nonce, body);
        let given = signature.to_ascii_lowercase();
        expected.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Length of the plaintext after strict PKCS#7 padding removal, checked without branching on
/// secret bytes. `None` when the padding is invalid.
fn pkcs7_unpadded_len(block_aligned: &[u8]) -> Option<usize> {
    let len = block_aligned.len();
    let pad = *block_aligned.last()?;
    // 1 <= pad <= 16
    let mut ok = !pad.ct_eq(&0) & pad.ct_lt(&(BLOCK as u8 + 1));
    for i in 0..BLOCK {
        let byte = block_aligned[len - 1 - i];
        let in_pad = (i as u8).ct_lt(&pad);
        ok &= !in_pad | byte.ct_eq(&pad);
    }
    bool::from(ok).then(|| len - pad as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> EncryptKey {
        EncryptKey::new(SecretString::from(s.to_owned()))
    }

    #[test]
    fn decrypts_the_official_doc_vector() {
        let k = key("test key");
        assert_eq!(
            hex::encode(k.aes_key),
            "fa2bdca424f01f01ffb48df93acc35d439c7fd331a1a7fba6ac2fd83aa9ab31a"
        );
        let plain = k
            .decrypt("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=")
            .unwrap();
        assert_eq!(plain, b"hello world");
    }

    #[test]
    fn encrypt_round_trips_and_matches_fixed_iv_vector() {
        let k = key("kL3pQ9xZ7vB2nM4wR8tY6uI0oP5aS1dF");
        let plain = br#"{"challenge":"ajls384kdjx98XX","token":"vT0kEn4TestOnly9xYz2AbCdEfGhIjKl","type":"url_verification"}"#;
        let iv: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        let wire = k.encrypt(plain, iv);
        assert_eq!(
            wire,
            "EBESExQVFhcYGRobHB0eH8EXVqzIPsb9nG1TjkLPY6Y1r3iz1wlwxL8ZVkYlNuDH6K1/e5i4buNrfRHn4DmaLWSelwc8yGDowwLDvDu2rzPeCQVFwCYJUVAnS2muXwGuJddFW7NrNsNXlkwHSGEegDVsA5xiIt7/1Xc332xOC9s="
        );
        assert_eq!(k.decrypt(&wire).unwrap(), plain);
        for len in 0..40 {
            let msg = vec![b'x'; len];
            assert_eq!(k.decrypt(&k.encrypt(&msg, [7; 16])).unwrap(), msg);
        }
    }

    #[test]
    fn signature_matches_vector_b() {
        let k = key("kL3pQ9xZ7vB2nM4wR8tY6uI0oP5aS1dF");
        let body = br#"{"encrypt":"x"}"#;
        let sig = k.signature("1719391068", "1938475621", body);
        assert!(k.verify_signature("1719391068", "1938475621", body, &sig));
        assert!(k.verify_signature("1719391068", "1938475621", body, &sig.to_uppercase()));
        assert!(!k.verify_signature("1719391069", "1938475621", body, &sig));
        assert!(!k.verify_signature("1719391068", "1938475621", body, &sig[..63]));
        assert!(!k.verify_signature("1719391068", "1938475621", body, ""));
    }

    #[test]
    fn rejects_bad_inputs_with_specific_errors() {
        let k = key("test key");
        assert_eq!(k.decrypt("not base64!").unwrap_err(), DecryptError::Base64);
        assert_eq!(
            k.decrypt(&STANDARD.encode([0u8; 16])).unwrap_err(),
            DecryptError::Length
        );
        assert_eq!(
            k.decrypt(&STANDARD.encode([0u8; 40])).unwrap_err(),
            DecryptError::Length
        );
        // Valid length, wrong key: garbage padding.
        let other = key("other key").encrypt(b"hello world", [1; 16]);
        assert_eq!(k.decrypt(&other).unwrap_err(), DecryptError::Padding);
    }

    #[test]
    fn pkcs7_is_strict() {
        let mut block = [b'a'; 16];
        assert_eq!(pkcs7_unpadded_len(&block), None);
        block[15] = 1;
        assert_eq!(pkcs7_unpadded_len(&block), Some(15));
        block[14] = 2;
        block[15] = 2;
        assert_eq!(pkcs7_unpadded_len(&block), Some(14));
        block[14] = 3;
        assert_eq!(pkcs7_unpadded_len(&block), None);
        assert_eq!(pkcs7_unpadded_len(&[16; 16]), Some(0));
        assert_eq!(pkcs7_unpadded_len(&[17; 16]), None);
        assert_eq!(pkcs7_unpadded_len(&[0; 16]), None);
    }
}
