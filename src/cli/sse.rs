//! A client of server-sent events, as the HTML standard parses them: lines end with
//! CR LF, LF or CR; `:` starts a comment; `field: value` (one space after the colon is
//! dropped); a blank line ends a message; `data` lines join with LF. Used by
//! `events tail --forward-to` to follow `GET /v1/stream`, and by the tests.

use std::collections::VecDeque;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;

use super::client;

/// The longest line (or message) kept: far above any event the gateway takes, and a
/// bound all the same.
const MAX_MESSAGE: usize = 64 << 20;

/// One message: what its fields said. Messages with no field at all (comments only)
/// are not reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// This message's `id`, if it carried one.
    pub id: Option<String>,
    pub event: Option<String>,
    /// The `data` lines joined with LF; empty without any.
    pub data: String,
    pub retry: Option<u64>,
}

/// Turns bytes, as they arrive, into messages.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting this one belongs to it.
    after_cr: bool,
    message: Message,
    /// Any field seen since the last blank line.
    started: bool,
    data_lines: usize,
}

impl Parser {
    /// Feeds `bytes`; answers the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<Message>> {
        let mut done = Vec::new();
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(message) = self.line_ended(&line) {
                        done.push(message);
                    }
                }
                _ => {
                    if self.line.len() + self.message.data.len() >= MAX_MESSAGE {
                        bail!("a server-sent message is longer than {MAX_MESSAGE} bytes");
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(done)
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<Message> {
        if line.is_empty() {
            let message = std::mem::take(&mut self.message);
            self.data_lines = 0;
            return std::mem::take(&mut self.started).then_some(message);
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.message.event = Some(value.to_string()),
            "data" => {
                if self.data_lines > 0 {
                    self.message.data.push('\n');
                }
                self.message.data.push_str(value);
                self.data_lines += 1;
            }
            // An id holding NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.message.id = Some(value.to_string()),
            "retry" => match value.parse() {
                Ok(ms) => self.message.retry = Some(ms),
                Err(_) => return None,
            },
            _ => return None,
        }
        self.started = true;
        None
    }
}

/// A stream being read: messages as they come.
pub struct EventStream {
    body: hyper::body::Incoming,
    parser: Parser,
    ready: VecDeque<Message>,
}

impl EventStream {
    /// `GET url` with `headers`; fails unless the answer is `200 text/event-stream`,
    /// with the admin API's own error when it sent one.
    pub async fn open(
        url: &str,
        headers: HeaderMap,
        tls: &client::TlsArgs,
    ) -> anyhow::Result<EventStream> {
        let response = client::open_with(Method::GET, url, headers, Bytes::new(), tls)
            .await
            .with_context(|| format!("cannot open {}", without_query(url)))?;
        let status = response.status();
        let is_stream = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !status.is_success() || !is_stream {
            let body = response.into_body().collect().await?.to_bytes();
            return Err(super::events::api_error(status, &body));
        }
        Ok(EventStream {
            body: response.into_body(),
            parser: Parser::default(),
            ready: VecDeque::new(),
        })
    }

    /// The next message, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Message>> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(Some(message));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            if let Ok(data) = frame?.into_data() {
                self.ready.extend(self.parser.feed(&data)?);
            }
        }
    }
}

/// A URL without its query, for messages.
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parser: &mut Parser, chunks: &[&[u8]]) -> Vec<Message> {
        chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).unwrap())
            .collect()
    }

    #[test]
    fn messages_fields_and_comments() {
        let mut p = Parser::default();
        let got = all(
            &mut p,
            &[b"retry: 2000\nid: 5\n\n: keep-alive\n\nid: 6\nevent: push\ndata: {\"a\":1}\n\n"],
        );
        assert_eq!(
            got,
            vec![
                Message {
                    id: Some("5".into()),
                    retry: Some(2000),
                    ..Message::default()
                },
                Message {
                    id: Some("6".into()),
                    event: Some("push".into()),
                    data: "{\"a\":1}".into(),
                    retry: None,
                },
            ]
        );
    }

    #[test]
    fn any_line_ending_and_any_split() {
        let text = b"event: a\r\ndata: one\r\ndata:two\r\rdata: x\ndata\n\n";
        let whole = all(&mut Parser::default(), &[text]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].data, "one\ntwo");
        assert_eq!(whole[0].event.as_deref(), Some("a"));
        assert_eq!(whole[1].data, "x\n");
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(all(&mut Parser::default(), &[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_message_without_a_blank_line_is_not_done() {
        let mut p = Parser::default();
        assert!(p.feed(b"id: 1\ndata: x\n").unwrap().is_empty());
        assert_eq!(p.feed(b"\n").unwrap()[0].data, "x");
    }
}
