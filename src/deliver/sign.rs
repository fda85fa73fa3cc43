//! (placeholder until the outbound branch lands)
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("bad secret")]
    BadSecret,
}

pub fn new_secret() -> String {
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()
}

pub fn valid_secret(s: &str) -> bool {
    s.starts_with("whsec_")
}

pub fn signature(
    _secrets: &[&str],
    _id: &str,
    _ts: i64,
    _body: &[u8],
) -> Result<String, SignError> {
    Ok(String::new())
}
