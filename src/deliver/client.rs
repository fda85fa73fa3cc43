//! (placeholder until the outbound branch lands)
use std::time::Duration;

use super::target::AllowList;

pub struct OutboundSettings {
    pub allow: AllowList,
    pub timeout: Duration,
    pub user_agent: String,
}

#[derive(Clone)]
pub struct Outbound;

#[derive(Debug, Default)]
pub struct Attempted {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
}

impl Outbound {
    pub fn new(_settings: OutboundSettings) -> anyhow::Result<Outbound> {
        Ok(Outbound)
    }

    pub async fn post(
        &self,
        _url: &str,
        _ca_pem: Option<&str>,
        _headers: &[(String, String)],
        _body: bytes::Bytes,
    ) -> Attempted {
        Attempted::default()
    }
}
