//! A submitted HTML form (`application/x-www-form-urlencoded`), and how the console
//! reads one: bounded, and only with that content type.

use http::HeaderMap;

/// The most a console form may hold; the largest is a subscription with a long list of
/// event patterns.
pub const MAX_FORM: usize = 64 * 1024;

#[derive(Default, Debug)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form {
            pairs: form_urlencoded::parse(body)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// The first value of `name`, or `""`.
    pub fn get(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }
}

/// Whether a request says it carries a form.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A local path to go back to after a form (`/…`, never `//host` or a scheme), or `/`.
pub fn local_path(given: &str) -> &str {
    let local = given.starts_with('/')
        && !given.starts_with("//")
        && !given.contains('\\')
        && !given.chars().any(char::is_control);
    if local {
        given
    } else {
        "/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_their_fields_and_only_local_paths_are_followed() {
        let form = Form::parse(b"name=a+b&url=http%3A%2F%2Fx%2F&active=on&name=second");
        assert_eq!(form.get("name"), "a b");
        assert_eq!(form.get("url"), "http://x/");
        assert!(form.has("active") && !form.has("mode"));
        assert_eq!(form.get("mode"), "");
        assert_eq!(
            local_path("/subscriptions/sub_1/logs?x=1"),
            "/subscriptions/sub_1/logs?x=1"
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "x",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }

    #[test]
    fn only_urlencoded_bodies_are_forms() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&headers));
        headers.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_form(&headers));
    }
}
