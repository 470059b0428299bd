//! `index.json` with its `index.json.sig` as the operator's poller verifies them. The input
//! is split at its first NUL: index bytes before it, signature text after it. Must refuse,
//! never panic; and never accept bytes the fixed key did not sign.
#![no_main]

use kpersist_kmod::repository::verify_index;
use kpersist_kmod::signing::PublicKey;
use libfuzzer_sys::fuzz_target;

/// A public key whose private half nobody has: no fuzz input may verify under it.
const TRUSTED: &str = "NcZkcXGt591Dpd1xSqsSH7s+5g7oEDZ54Onfqys9jBg=";

fuzz_target!(|data: &[u8]| {
    let Ok(key) = PublicKey::from_base64(TRUSTED, "fuzz key") else {
        return;
    };
    let (index, signature) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let result = verify_index(index, signature, &[key]);
    assert!(
        result.is_err(),
        "an index verified under a key nobody holds"
    );
    // Key text from outside (a policy's trustedKeys) goes through the same decoder.
    let _ = PublicKey::from_base64(&String::from_utf8_lossy(signature), "fuzz input");
});
