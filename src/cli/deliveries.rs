//! `hookgate deliveries list | retry`: a subscription's delivery log ("View logs") and
//! another attempt at one delivery, through SPEC §9's admin API.

use http::Method;
use serde_json::Value;

use super::subscriptions::{items, segment, AdminArgs};
use super::table::{cell, clean, table, CELL_WIDTH};

/// The statuses a delivery can have (SPEC §9).
const STATUSES: [&str; 6] = [
    "pending",
    "delivered",
    "failed",
    "awaiting_callback",
    "finished",
    "timed_out",
];

#[derive(clap::Subcommand, Debug)]
pub enum DeliveriesAction {
    /// A subscription's deliveries, oldest first, with each one's last attempt.
    List {
        /// The subscription's id.
        #[arg(long)]
        subscription: String,
        #[arg(long, value_parser = STATUSES)]
        status: Option<String>,
        /// Start after this delivery (the `--after` a previous page printed).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Attempt a delivery again now (a failed one, or any).
    Retry { id: String },
}

/// `GET /v1/subscriptions/{id}/deliveries` with the filters given.
fn list_path(subscription: &str, status: Option<&str>, after: Option<u64>, limit: usize) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(status) = status {
        query.append_pair("status", status);
    }
    if let Some(after) = after {
        query.append_pair("after", &after.to_string());
    }
    query.append_pair("limit", &limit.to_string());
    format!(
        "/v1/subscriptions/{}/deliveries?{}",
        segment(subscription),
        query.finish()
    )
}

pub async fn run(action: DeliveriesAction, admin: &AdminArgs) -> anyhow::Result<bool> {
    let target = admin.target()?;
    match action {
        DeliveriesAction::List {
            subscription,
            status,
            after,
            limit,
            json,
        } => {
            let path = list_path(&subscription, status.as_deref(), after, limit);
            let page = target.call_with(Method::GET, &path, None).await?;
            let list = items(&page, "deliveries");
            if json {
                for delivery in list {
                    println!("{delivery}");
                }
            } else {
                if !list.is_empty() {
                    print!("{}", list_table(list));
                }
                match (list.len(), page["next_after"].as_u64()) {
                    (0, _) => eprintln!("no deliveries"),
                    (n, Some(next)) if n == limit => eprintln!("more may follow: --after {next}"),
                    _ => {}
                }
            }
        }
        DeliveriesAction::Retry { id } => {
            let path = format!("/v1/deliveries/{}/retry", segment(&id));
            target.call_with(Method::POST, &path, None).await?;
            println!("delivery {id} will be attempted again now");
        }
    }
    Ok(true)
}

/// One line per delivery: its last attempt's outcome and when the next one is due.
fn list_table(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let attempts = d["attempts"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let last = attempts.last().unwrap_or(&Value::Null);
            let outcome = match (&last["status_code"], &last["error"]) {
                (Value::Number(code), _) => code.to_string(),
                (_, Value::String(error)) => clean(error, CELL_WIDTH),
                _ => "-".to_string(),
            };
            vec![
                cell(&d["id"]),
                cell(&d["seq"]),
                cell(&d["event_id"]),
                cell(&d["status"]),
                attempts.len().to_string(),
                cell(&last["at"]),
                outcome,
                cell(&last["next_attempt_at"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SEQ", "EVENT", "STATUS", "ATTEMPTS", "LAST", "RESULT", "NEXT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        action: DeliveriesAction,
        #[command(flatten)]
        admin: AdminArgs,
    }

    fn parse(args: &[&str]) -> Result<DeliveriesAction, clap::Error> {
        Cli::try_parse_from(std::iter::once("deliveries").chain(args.iter().copied()))
            .map(|cli| cli.action)
    }

    #[test]
    fn list_takes_a_subscription_and_filters() {
        let DeliveriesAction::List {
            subscription,
            status,
            after,
            limit,
            json,
        } = parse(&[
            "list",
            "--subscription",
            "s 1",
            "--status",
            "failed",
            "--after",
            "7",
        ])
        .unwrap()
        else {
            panic!("not list")
        };
        assert_eq!(
            list_path(&subscription, status.as_deref(), after, limit),
            "/v1/subscriptions/s%201/deliveries?status=failed&after=7&limit=100"
        );
        assert!(!json);
        assert_eq!(
            list_path("s1", None, None, 5),
            "/v1/subscriptions/s1/deliveries?limit=5"
        );
        assert!(parse(&["list"]).is_err());
        assert!(parse(&["list", "--subscription", "s", "--status", "lost"]).is_err());
        for status in STATUSES {
            parse(&["list", "--subscription", "s", "--status", status]).unwrap();
        }
        assert!(
            matches!(parse(&["retry", "d1"]).unwrap(), DeliveriesAction::Retry { id } if id == "d1")
        );
        assert!(parse(&["retry"]).is_err());
    }

    #[test]
    fn the_log_is_a_table_of_last_attempts() {
        let page = json!({"deliveries": [
            {"id": "d1", "subscription": "s1", "seq": 41, "event_id": "evt_1", "status": "delivered",
             "attempts": [{"at": "2026-01-02T03:04:05Z", "duration_ms": 20, "status_code": 200,
                           "response_body": "ok", "next_attempt_at": null}]},
            {"id": "d2", "subscription": "s1", "seq": 42, "event_id": "evt_2", "status": "pending",
             "attempts": [
                {"at": "2026-01-02T03:04:06Z", "status_code": 503, "next_attempt_at": "2026-01-02T03:04:11Z"},
                {"at": "2026-01-02T03:04:11Z", "error": "connect: connection\nrefused",
                 "next_attempt_at": "2026-01-02T03:09:11Z"}]},
            {"id": "d3", "subscription": "s1", "seq": 43, "event_id": "evt_3", "status": "pending",
             "attempts": []}
        ], "next_after": 3});
        assert_eq!(
            list_table(items(&page, "deliveries")),
            "ID  SEQ  EVENT  STATUS     ATTEMPTS  LAST                  RESULT                       NEXT\n\
             d1  41   evt_1  delivered  1         2026-01-02T03:04:05Z  200                          -\n\
             d2  42   evt_2  pending    2         2026-01-02T03:04:11Z  connect: connection refused  2026-01-02T03:09:11Z\n\
             d3  43   evt_3  pending    0         -                     -                            -\n"
        );
    }
}
