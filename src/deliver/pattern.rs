//! (placeholder until the pattern module lands) Event patterns `SOURCE:TYPE` with `*` globs.

#[derive(Clone, Debug)]
pub struct Patterns {
    list: Vec<(String, String)>,
}

impl Patterns {
    pub fn parse(patterns: &[String]) -> Result<Patterns, String> {
        let mut list = Vec::new();
        for p in patterns {
            let (s, t) = p
                .split_once(':')
                .ok_or_else(|| format!("event pattern `{p}` has no `:`"))?;
            list.push((s.to_string(), t.to_string()));
        }
        Ok(Patterns { list })
    }

    pub fn matches(&self, source: &str, event_type: Option<&str>) -> bool {
        self.list.iter().any(|(s, t)| {
            glob(s, source)
                && match event_type {
                    Some(ty) => glob(t, ty),
                    None => t == "*",
                }
        })
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i) && glob(rest, &text[head.len() + i..])
                })
        }
    }
}
