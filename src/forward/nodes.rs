//! The broker's nodes: the addresses of `broker.url`, parsed once at start, the order in
//! which they are tried, and which one the forwarder is connected to.
//!
//! A node is named by its `host:port` in logs, `/readyz` and metrics, never by its URL,
//! which carries a password. The forwarder connects to the first node that answers, in
//! the configured order; when the link is lost it starts again with the node after the
//! one it lost, so that a node that has just died is tried last, and it stays on
//! whichever node answered (no flapping back to the first).

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::uri::AMQPUri;

use crate::config::Secret;

/// One broker address, ready to connect to.
#[derive(Clone)]
pub struct Node {
    /// `host:port`: what logs, `/readyz` and metrics show.
    name: String,
    uri: AMQPUri,
}

impl Node {
    /// Parses a resolved `broker.url` entry. The error says what is wrong with it,
    /// never any part of it.
    pub fn parse(url: &Secret) -> Result<Node, String> {
        let text = std::str::from_utf8(url.expose()).map_err(|_| "it is not UTF-8".to_string())?;
        let parsed = url::Url::parse(text).map_err(|e| {
            format!("not a URL ({e}); expected amqp://user:password@host:port/vhost")
        })?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err("the scheme must be amqp or amqps".into());
        }
        let mut uri: AMQPUri = text.parse().map_err(|_| {
            "not a valid AMQP URL: check the user info's percent-encoding and the query \
             parameters (heartbeat, frame_max, channel_max, connection_timeout, auth_mechanism)"
                .to_string()
        })?;
        // amq-protocol-uri takes the host from `Url::domain`, which is empty for an IP
        // address, and would then connect to `localhost`.
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = ip {
            uri.authority.host = ip.to_string();
        }
        let port = uri.authority.port;
        let name = match ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{}:{port}", uri.authority.host),
        };
        Ok(Node { name, uri })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full address, credentials included: only for lapin.
    pub(super) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.name)
    }
}

/// Which node to try next.
#[derive(Debug)]
pub struct Rotation {
    len: usize,
    /// Where the next round of attempts starts.
    start: usize,
}

impl Rotation {
    pub fn new(len: usize) -> Rotation {
        Rotation {
            len: len.max(1),
            start: 0,
        }
    }

    /// The nodes to try in turn until one answers: each once, from the first at the
    /// start. A round in which none answered is followed by the same round after the
    /// backoff.
    pub fn round(&self) -> impl Iterator<Item = usize> {
        let (start, len) = (self.start, self.len);
        (0..len).map(move |i| (start + i) % len)
    }

    /// The link to node `index` was lost: the next round starts with the node after it.
    pub fn lost(&mut self, index: usize) {
        self.start = (index + 1) % self.len;
    }
}

const NOT_CONNECTED: usize = usize::MAX;

/// The forwarder's link as `/readyz` and `/metrics` see it: the configured nodes, and
/// which one, if any, it is connected to now.
#[derive(Debug)]
pub struct BrokerStatus {
    nodes: Vec<String>,
    current: AtomicUsize,
}

impl BrokerStatus {
    pub fn new(nodes: &[Node]) -> BrokerStatus {
        BrokerStatus {
            nodes: nodes.iter().map(|n| n.name().to_string()).collect(),
            current: AtomicUsize::new(NOT_CONNECTED),
        }
    }

    /// Every configured node's name, in `broker.url`'s order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The node the forwarder is connected to.
    pub fn node(&self) -> Option<&str> {
        self.nodes
            .get(self.current.load(Ordering::Acquire))
            .map(String::as_str)
    }

    pub fn connected(&self) -> bool {
        self.node().is_some()
    }

    pub(super) fn set(&self, index: Option<usize>) {
        self.current
            .store(index.unwrap_or(NOT_CONNECTED), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str) -> Result<Node, String> {
        Node::parse(&Secret::new(url))
    }

    #[test]
    fn a_node_is_named_by_host_and_port_only() {
        let n = node("amqp://hookgate:s3cret@rabbit-0.rabbit.svc:5673/%2f").unwrap();
        assert_eq!(n.name(), "rabbit-0.rabbit.svc:5673");
        assert!(!format!("{n:?}").contains("s3cret"));
        assert_eq!(n.uri().authority.userinfo.password, "s3cret");
        assert_eq!(n.uri().vhost, "/");
        let tls = node("amqps://u:p@broker.example").unwrap();
        assert_eq!(tls.name(), "broker.example:5671");
    }

    #[test]
    fn an_ip_address_is_connected_to_as_written() {
        // amq-protocol-uri alone would make both `localhost`.
        let v4 = node("amqp://g:g@10.1.2.3:5672/%2f").unwrap();
        assert_eq!(v4.uri().authority.host, "10.1.2.3");
        assert_eq!(v4.name(), "10.1.2.3:5672");
        let v6 = node("amqp://g:g@[fd00::7]:5672/%2f").unwrap();
        assert_eq!(v6.uri().authority.host, "fd00::7");
        assert_eq!(v6.name(), "[fd00::7]:5672");
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        for bad in [
            "rabbit-0:5672",
            "http://u:hunter2@h:5672/",
            "amqp://u:hunter2@h:5672/%2f?heartbeat=soon",
            "amqp://u:hunter2@h:notaport/",
        ] {
            let err = node(bad).unwrap_err();
            assert!(
                !err.contains("hunter2") && !err.contains("rabbit-0"),
                "{err}"
            );
        }
        assert!(Node::parse(&Secret::new(vec![0xff, 0xfe])).is_err());
    }

    fn order(r: &Rotation) -> Vec<usize> {
        r.round().collect()
    }

    #[test]
    fn nodes_are_tried_from_the_first_and_after_a_loss_from_the_next() {
        let mut r = Rotation::new(3);
        assert_eq!(order(&r), [0, 1, 2], "the configured order at start");
        // Connected to 0, which dies: 1 and 2 first, 0 last.
        r.lost(0);
        assert_eq!(order(&r), [1, 2, 0]);
        // No node answered that round: the same round again after the backoff.
        assert_eq!(order(&r), [1, 2, 0]);
        // 1 refused, 2 answered and was lost in turn.
        r.lost(2);
        assert_eq!(order(&r), [0, 1, 2]);
        r.lost(1);
        assert_eq!(order(&r), [2, 0, 1]);
    }

    #[test]
    fn a_single_node_is_always_the_one_tried() {
        let mut r = Rotation::new(1);
        assert_eq!(order(&r), [0]);
        r.lost(0);
        assert_eq!(order(&r), [0]);
    }

    #[test]
    fn the_status_names_the_node_in_use() {
        let nodes = [
            node("amqp://u:p@a:5672").unwrap(),
            node("amqp://u:p@b:5672").unwrap(),
        ];
        let status = BrokerStatus::new(&nodes);
        assert_eq!(status.nodes(), ["a:5672", "b:5672"]);
        assert_eq!(status.node(), None);
        assert!(!status.connected());
        status.set(Some(1));
        assert_eq!(status.node(), Some("b:5672"));
        status.set(None);
        assert!(!status.connected());
    }
}
