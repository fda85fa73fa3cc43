//! Subscriptions written in the config (`[[subscriptions]]`, `"managed":"config"`): at
//! each start the journal's copy is brought in line with the file, which wins (an entry
//! hookgate disabled is active again if the file says so). Entries gone from the file
//! are deleted, dropping their open deliveries. Their secrets stay in the config: the
//! journal keeps none of them.

use std::collections::HashMap;

use anyhow::{anyhow, bail};

use crate::config::{Config, SubscriptionConfig, SubscriptionMode};
use crate::journal::subscription::Managed;
use crate::journal::{Journal, Mode, Subscription};

fn mode(mode: SubscriptionMode) -> Mode {
    match mode {
        SubscriptionMode::Notify => Mode::Notify,
        SubscriptionMode::Finish => Mode::Finish,
        SubscriptionMode::Callback => Mode::Callback,
        SubscriptionMode::Pull => Mode::Pull,
    }
}

/// The journal's form of one config entry, with its CA read; `existing` lends its number
/// and history.
fn from_config(
    cfg: &SubscriptionConfig,
    existing: Option<&Subscription>,
    now_ms: u64,
) -> anyhow::Result<Subscription> {
    let ca = match &cfg.ca {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "subscription `{}`: cannot read ca {}: {e}",
                cfg.name,
                path.display()
            )
        })?),
        None => None,
    };
    Ok(Subscription {
        num: existing.map_or(0, |s| s.num),
        name: cfg.name.clone(),
        url: cfg.url.clone(),
        events: cfg.events.clone(),
        active: cfg.active,
        mode: mode(cfg.mode()),
        ordered: cfg.ordered,
        max_in_flight: cfg.max_in_flight as u32,
        rate_limit: cfg.rate_limit.clone(),
        headers: cfg
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        secrets: Vec::new(),
        ca,
        managed: Managed::Config,
        created_at_ms: existing.map_or(now_ms, |s| s.created_at_ms),
        disabled_reason: existing
            .filter(|_| !cfg.active)
            .and_then(|s| s.disabled_reason.clone()),
        failing_since_ms: existing.and_then(|s| s.failing_since_ms),
    })
}

/// Brings the journal's config-managed subscriptions in line with `config`; answers the
/// resolved signing secrets by subscription name.
pub async fn sync(
    config: &Config,
    journal: &Journal,
    now_ms: u64,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let stored = journal.subscriptions().borrow().clone();
    let mut secrets = HashMap::new();
    for cfg in &config.subscriptions {
        let existing = stored.iter().find(|s| s.name == cfg.name);
        if let Some(api) = existing.filter(|s| s.managed == Managed::Api) {
            bail!(
                "subscription `{}` in the config has the name of {}, made through the admin API; rename one of them",
                cfg.name,
                api.id()
            );
        }
        if cfg.mode() != SubscriptionMode::Pull {
            let Some(reference) = &cfg.secret else {
                bail!(
                    "subscription `{}`: `secret` is required to sign its deliveries: a Standard Webhooks secret, `whsec_` followed by base64 of 24 random bytes (for example `secret = \"env:NAME\"` with NAME set to `whsec_$(openssl rand -base64 24)`)",
                    cfg.name
                );
            };
            let secret = reference
                .resolve()
                .map_err(|e| anyhow!("subscription `{}`: secret: {e}", cfg.name))?;
            let secret = String::from_utf8_lossy(secret.expose()).into_owned();
            if !super::sign::valid_secret(&secret) {
                bail!(
                    "subscription `{}`: secret {reference} is not `whsec_` followed by base64",
                    cfg.name
                );
            }
            secrets.insert(cfg.name.clone(), vec![secret]);
        }
        let wanted = from_config(cfg, existing, now_ms)?;
        if existing != Some(&wanted) {
            journal
                .put_subscription(wanted)
                .await
                .map_err(|e| anyhow!("subscription `{}`: {e}", cfg.name))?;
        }
    }
    for gone in stored.iter().filter(|s| {
        s.managed == Managed::Config && !config.subscriptions.iter().any(|c| c.name == s.name)
    }) {
        let dropped = journal
            .delete_subscription(gone.num)
            .await
            .map_err(|e| anyhow!("removing subscription `{}`: {e}", gone.name))?;
        tracing::info!(subscription = %gone.id(), name = %gone.name, dropped, "subscription removed from the config; deleted");
    }
    Ok(secrets)
}
