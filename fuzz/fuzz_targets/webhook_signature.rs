//! `twilio::webhook`: the `X-Twilio-Signature` check of form and JSON webhooks, with the
//! signature and settings headers as sent, under a fixed Auth Token and SharedKey.
//!
//! Input: the URL, the `X-Twilio-Signature` value and the
//! `X-Twilio-Webhooks-Signature-Settings` value on the first three lines (a missing line is
//! a missing header), then the body: a JSON body as it is, a form body's parameters as it
//! decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use twilio::webhook::{
    Algorithm, SignatureError, SignatureHeaders, SignatureValidator, body_sha256_hex, sign,
};

/// The Auth Token of Twilio's own test vectors.
const AUTH_TOKEN: &str = "12345";
const SHARED_KEY_ID: &str = "KS0123456789abcdef0123456789abcdef";
const SHARED_KEY_SECRET: &str = "a webhooks shared key";

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn signed_with(signature: &str) -> SignatureHeaders<'_> {
    SignatureHeaders {
        signature: Some(signature),
        settings: None,
    }
}

/// Errors echo at most 64 characters of what the request sent.
fn check_echo(result: &Result<(), SignatureError>) {
    if let Err(
        SignatureError::UnknownSharedKey(echo) | SignatureError::UnsupportedAlgorithm(echo),
    ) = result
    {
        assert!(echo.chars().count() <= 64, "{echo:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(4, |b| *b == b'\n');
    let Some(Ok(url)) = lines.next().map(std::str::from_utf8) else {
        return;
    };
    let signature = lines.next().and_then(|l| std::str::from_utf8(l).ok());
    let settings = lines.next().and_then(|l| std::str::from_utf8(l).ok());
    let body = lines.next().unwrap_or_default();
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let validator = SignatureValidator::new(secret(AUTH_TOKEN))
        .with_shared_key(SHARED_KEY_ID, secret(SHARED_KEY_SECRET));

    // Whatever the headers say: an answer, never a panic.
    let headers = SignatureHeaders {
        signature,
        settings,
    };
    check_echo(&validator.validate_json(url, headers, body));
    check_echo(&validator.validate_form(url, headers, &params));

    // Form: the signature Twilio would send validates, in any order of the parameters and
    // with blanks around it; one made with another key does not.
    let signature = sign(Algorithm::HmacSha1, &secret(AUTH_TOKEN), url, &params);
    assert_eq!(
        validator.validate_form(url, signed_with(&signature), &params),
        Ok(())
    );
    let reversed: Vec<_> = params.iter().rev().cloned().collect();
    assert_eq!(
        validator.validate_form(url, signed_with(&signature), &reversed),
        Ok(())
    );
    let padded = format!(" {signature}\t");
    assert_eq!(
        validator.validate_form(url, signed_with(&padded), &params),
        Ok(())
    );
    let forged = sign(Algorithm::HmacSha1, &secret("54321"), url, &params);
    assert_eq!(
        validator.validate_form(url, signed_with(&forged), &params),
        Err(SignatureError::Mismatch)
    );
    let shared = sign(
        Algorithm::HmacSha256,
        &secret(SHARED_KEY_SECRET),
        url,
        &params,
    );
    let settings = format!("key={SHARED_KEY_ID},algorithm=HMAC_SHA256");
    let shared_headers = SignatureHeaders {
        signature: Some(&shared),
        settings: Some(&settings),
    };
    assert_eq!(
        validator.validate_form(url, shared_headers, &params),
        Ok(())
    );

    // JSON: where the URL carries no body hash yet (and no fragment the hash would land
    // in), Twilio's URL with `bodySHA256` appended validates with its signature, and any
    // one-byte change of the body, or one more byte, does not.
    if url.contains('#')
        || validator.validate_json(url, signed_with(&signature), body)
            != Err(SignatureError::MissingBodyHash)
    {
        return;
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    let signed_url = format!("{url}{separator}bodySHA256={}", body_sha256_hex(body));
    let signature = sign::<&str, &str>(Algorithm::HmacSha1, &secret(AUTH_TOKEN), &signed_url, &[]);
    assert_eq!(
        validator.validate_json(&signed_url, signed_with(&signature), body),
        Ok(())
    );
    let mut tampered = body.to_vec();
    match tampered.get_mut(data.len() % body.len().max(1)) {
        Some(byte) => *byte ^= 1 << (data.len() % 8),
        None => tampered.push(b' '),
    }
    assert_eq!(
        validator.validate_json(&signed_url, signed_with(&signature), &tampered),
        Err(SignatureError::BodyHashMismatch)
    );
    let mut longer = body.to_vec();
    longer.push(b'\n');
    assert_eq!(
        validator.validate_json(&signed_url, signed_with(&signature), &longer),
        Err(SignatureError::BodyHashMismatch)
    );
});
