//! Subscriptions written in the config (`[[subscriptions]]`, `"managed":"config"`): at
//! each start and reload the journal's copy is brought in line with the file, which wins (an entry
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

/// A config entry's `ca` file, read as `serve` reads it (and `check-config` checks it).
pub fn read_ca(path: &std::path::Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

/// The journal's form of one config entry, with its CA read, before it meets the
/// journal's copy (see [`adopt`]).
fn from_config(cfg: &SubscriptionConfig, now_ms: u64) -> anyhow::Result<Subscription> {
    let ca = match &cfg.ca {
        Some(path) => Some(read_ca(path).map_err(|e| {
            anyhow!(
                "subscription `{}`: cannot read ca {}: {e}",
                cfg.name,
                path.display()
            )
        })?),
        None => None,
    };
    Ok(Subscription {
        num: 0,
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
        created_at_ms: now_ms,
        disabled_reason: None,
        failing_since_ms: None,
    })
}

/// `wanted` with the number and history of the journal's copy, if there is one: the
/// file wins, except that a reason for being disabled is kept while it stays inactive.
fn adopt(mut wanted: Subscription, existing: Option<&Subscription>) -> Subscription {
    if let Some(existing) = existing {
        wanted.num = existing.num;
        wanted.created_at_ms = existing.created_at_ms;
        wanted.failing_since_ms = existing.failing_since_ms;
        if !wanted.active {
            wanted.disabled_reason = existing.disabled_reason.clone();
        }
    }
    wanted
}

/// The config's subscriptions checked, with their secrets resolved and CAs read, before
/// anything is written: a reload whose subscriptions fail here changes nothing.
pub struct Plan {
    wanted: Vec<Subscription>,
    /// The signing secrets of push subscriptions, by name.
    pub secrets: HashMap<String, Vec<String>>,
}

/// Checks `config`'s subscriptions against the journal's and resolves their secrets.
pub fn plan(config: &Config, journal: &Journal, now_ms: u64) -> anyhow::Result<Plan> {
    let stored = journal.subscriptions().borrow().clone();
    let mut secrets = HashMap::new();
    let mut wanted = Vec::new();
    for cfg in &config.subscriptions {
        refuse_api_name(&stored, &cfg.name)?;
        if let Some(secret) = signing_secret(cfg)? {
            secrets.insert(cfg.name.clone(), vec![secret]);
        }
        wanted.push(from_config(cfg, now_ms)?);
    }
    Ok(Plan { wanted, secrets })
}

/// The signing secret of a push subscription, resolved and checked; `None` for a pull
/// subscription, which signs nothing.
pub fn signing_secret(cfg: &SubscriptionConfig) -> anyhow::Result<Option<String>> {
    if cfg.mode() == SubscriptionMode::Pull {
        return Ok(None);
    }
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
    Ok(Some(secret))
}

/// A config entry may not take the name of a subscription made through the API.
fn refuse_api_name(stored: &[Subscription], name: &str) -> anyhow::Result<()> {
    if let Some(api) = stored
        .iter()
        .find(|s| s.name == name && s.managed == Managed::Api)
    {
        bail!(
            "subscription `{name}` in the config has the name of {}, made through the admin API; rename one of them",
            api.id()
        );
    }
    Ok(())
}

impl Plan {
    /// Brings the journal's config-managed subscriptions in line with the plan: puts
    /// what changed, deletes what the file no longer has. Answers how many were put and
    /// deleted.
    pub async fn apply(&self, journal: &Journal) -> anyhow::Result<(usize, usize)> {
        let stored = journal.subscriptions().borrow().clone();
        let mut put = 0;
        for wanted in &self.wanted {
            refuse_api_name(&stored, &wanted.name)?;
            let existing = stored.iter().find(|s| s.name == wanted.name);
            let wanted = adopt(wanted.clone(), existing);
            if existing != Some(&wanted) {
                let name = wanted.name.clone();
                journal
                    .put_subscription(wanted)
                    .await
                    .map_err(|e| anyhow!("subscription `{name}`: {e}"))?;
                put += 1;
            }
        }
        let mut deleted = 0;
        for gone in stored.iter().filter(|s| {
            s.managed == Managed::Config && !self.wanted.iter().any(|w| w.name == s.name)
        }) {
            let dropped = journal
                .delete_subscription(gone.num)
                .await
                .map_err(|e| anyhow!("removing subscription `{}`: {e}", gone.name))?;
            tracing::info!(subscription = %gone.id(), name = %gone.name, dropped, "subscription removed from the config; deleted");
            deleted += 1;
        }
        Ok((put, deleted))
    }
}

/// Brings the journal's config-managed subscriptions in line with `config`; answers the
/// resolved signing secrets by subscription name.
pub async fn sync(
    config: &Config,
    journal: &Journal,
    now_ms: u64,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let plan = plan(config, journal, now_ms)?;
    plan.apply(journal).await?;
    Ok(plan.secrets)
}
