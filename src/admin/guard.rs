//! The admin API against browsers. A web page the operator visits must neither read the
//! API (by DNS rebinding: a name of the attacker's that now resolves to the admin
//! address) nor change anything through it (a cross-site form or `fetch`).
//!
//! - Host: a rebound name arrives as that name, so only known names are answered: an IP
//!   address (a page cannot make its own origin an address it does not serve from),
//!   `localhost`, or one of `admin.hosts`; any port. Others get `421`. `/healthz` and
//!   `/readyz` answer any Host: they say only whether the process is up, and load
//!   balancers and health checkers ask them by whatever name they know. `/metrics` does
//!   not (it names the sources and their traffic); Prometheus and Kubernetes ask by the
//!   pod's address, which passes.
//! - Calls that change state (anything but GET, HEAD and OPTIONS) from another origin are
//!   refused with `403`: an `Origin` other than the Host asked, or `Sec-Fetch-Site` other
//!   than `same-origin` or `none`. Clients that are not browsers send neither.
//!
//! No CORS headers are ever sent, so no other origin reads an answer.

use http::{header, Method, Request, Response, StatusCode};

use crate::answer::{error_response, Body};

/// The answer refusing `request`, if it is refused.
pub fn refuse<B>(request: &Request<B>, hosts: &[String]) -> Option<Response<Body>> {
    let path = request.uri().path();
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok());
    // Without any Host the request is not from a browser; HTTP/1.0 tools may omit it.
    if let Some(authority) = authority {
        if !matches!(path, "/healthz" | "/readyz") && !known_host(authority, hosts) {
            let shown: String = authority.chars().take(64).collect();
            return Some(error_response(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!("the admin listener does not answer for host `{shown}`; add the name to admin.hosts to use it"),
            ));
        }
    }
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && cross_origin(request, authority)
    {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "admin calls that change state are refused from another origin".into(),
        ));
    }
    None
}

/// Whether `authority` (`host[:port]`) names this listener.
fn known_host(authority: &str, hosts: &[String]) -> bool {
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    let host = host.to_ascii_lowercase();
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host == "localhost"
        || hosts.iter().any(|known| match known.strip_prefix('.') {
            // `.example.internal` stands for every name under it.
            Some(domain) => host
                .strip_suffix(&domain.to_ascii_lowercase())
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => known.eq_ignore_ascii_case(&host),
        })
}

fn cross_origin<B>(request: &Request<B>, authority: Option<&str>) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return true;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    // `null` (a sandboxed page, a file) or an origin for another host and port.
    let origin_authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_authority, authority) {
        (Some(from), Some(to)) => !from.eq_ignore_ascii_case(to),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, pairs: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status(request: &Request<()>) -> Option<StatusCode> {
        let hosts = [
            "hookgate-admin.internal".to_string(),
            ".svc.cluster.local".to_string(),
        ];
        refuse(request, &hosts).map(|r| r.status())
    }

    #[test]
    fn only_addresses_localhost_and_configured_names_are_answered() {
        for host in [
            "127.0.0.1:9090",
            "127.8.9.10",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "10.1.2.3:9090",
            "[fd00::7]:9090",
            "hookgate-admin.internal:9090",
            "hookgate-0.hookgate-replicas.ops.svc.cluster.local:9090",
        ] {
            let r = request(Method::GET, "/v1/events", &[("host", host)]);
            assert_eq!(status(&r), None, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "[::1",
        ] {
            let r = request(Method::GET, "/v1/events", &[("host", host)]);
            assert_eq!(status(&r), Some(StatusCode::MISDIRECTED_REQUEST), "{host}");
            let r = request(Method::GET, "/metrics", &[("host", host)]);
            assert_eq!(status(&r), Some(StatusCode::MISDIRECTED_REQUEST), "{host}");
        }
        for path in ["/healthz", "/readyz"] {
            let r = request(Method::GET, path, &[("host", "hookgate.svc:9090")]);
            assert_eq!(status(&r), None, "{path}");
        }
    }

    #[test]
    fn state_changes_from_another_origin_are_forbidden() {
        let post = |pairs: &[(&str, &str)]| {
            let mut all = vec![("host", "127.0.0.1:9090")];
            all.extend_from_slice(pairs);
            status(&request(Method::POST, "/v1/events/1/replay", &all))
        };
        assert_eq!(post(&[]), None, "a CLI sends no Origin");
        assert_eq!(post(&[("origin", "http://127.0.0.1:9090")]), None);
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), None);
        assert_eq!(
            post(&[("origin", "http://evil.example")]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(post(&[("origin", "null")]), Some(StatusCode::FORBIDDEN));
        assert_eq!(
            post(&[("sec-fetch-site", "cross-site")]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            post(&[("sec-fetch-site", "same-site")]),
            Some(StatusCode::FORBIDDEN)
        );
        // Reading is not a state change; the browser keeps the answer from the page.
        let get = request(
            Method::GET,
            "/v1/events",
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://evil.example"),
            ],
        );
        assert_eq!(status(&get), None);
    }
}
