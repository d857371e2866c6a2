//! AIP-158 page tokens: opaque to callers, bound to the filter they were issued for.
//!
//! A token is base64url of `{"after": <last id>, "filter": <fingerprint>}`; the fingerprint is
//! a SHA-256 prefix of the RPC's name and the request with its paging fields cleared, so a
//! token reused with another filter or another RPC is refused instead of silently paging
//! something else. Paging is keyset by
//! id, so items that did not change are neither skipped nor repeated while events arrive.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Serialize, Deserialize)]
struct Token {
    after: String,
    filter: String,
}

/// Fingerprint of an RPC's filter: hash of the RPC's name and the request's protobuf encoding
/// with paging cleared (its repeated fields canonical, so their order does not matter).
pub fn fingerprint(rpc: &str, filter_only: &impl prost::Message) -> String {
    let mut hash = Sha256::new();
    hash.update(rpc.as_bytes());
    hash.update([0]);
    hash.update(filter_only.encode_to_vec());
    hex::encode(&hash.finalize()[..12])
}

pub fn encode(after: &str, fingerprint: &str) -> String {
    let token = Token {
        after: after.to_owned(),
        filter: fingerprint.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("token serializes"))
}

/// The id to continue after; an error message when the token is not one of ours or was issued
/// for another filter.
pub fn decode(token: &str, fingerprint: &str) -> Result<String, &'static str> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| "not a page token issued by this service")?;
    let token: Token =
        serde_json::from_slice(&bytes).map_err(|_| "not a page token issued by this service")?;
    if token.filter != fingerprint {
        return Err("the page token was issued for a different filter");
    }
    Ok(token.after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let t = encode("7384728405024982599", "abc");
        assert_eq!(decode(&t, "abc").unwrap(), "7384728405024982599");
        assert!(decode(&t, "abd").is_err());
        assert!(decode("!!", "abc").is_err());
        assert!(decode("e30", "abc").is_err());
    }
}
