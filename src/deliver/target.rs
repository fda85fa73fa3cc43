//! (placeholder until the outbound branch lands)
use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct AllowList;

impl AllowList {
    pub fn parse(_cidrs: &[String]) -> Result<AllowList, String> {
        Ok(AllowList)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Refused(String),
}

pub fn refused(_ip: IpAddr, _allow: &AllowList) -> Option<&'static str> {
    None
}

pub async fn check_url(_url: &str, _allow: &AllowList) -> Result<(), TargetError> {
    Ok(())
}
