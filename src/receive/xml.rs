//! XML to JSON in the xmltodict convention: the root element becomes the only key;
//! attributes become `@name`; text beside attributes or children becomes `#text`;
//! repeated children become arrays; an element with nothing in it becomes null. Text is
//! trimmed, CDATA is text, comments and processing instructions are dropped, names keep
//! their namespace prefixes as written.
//!
//! A document type declaration is refused outright: no DTD means no entity expansion
//! (billion laughs) and no external entities. Depth is bounded.

use quick_xml::escape::unescape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::{Map, Value};

use super::add_repeated;

const MAX_DEPTH: usize = 128;

struct Frame {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Frame {
    fn open(start: &BytesStart) -> Result<Frame, String> {
        let name = utf8(start.name().as_ref())?;
        let mut fields = Map::new();
        // quick-xml's own duplicate check compares each attribute with every earlier one;
        // the map below finds duplicates in one pass instead.
        for attr in start.attributes().with_checks(false) {
            let attr = attr.map_err(|e| format!("bad attribute in <{name}>: {e}"))?;
            let key = format!("@{}", utf8(attr.key.as_ref())?);
            let raw = normalise_attribute(&utf8(&attr.value)?);
            let value =
                unescape(&raw).map_err(|e| format!("bad attribute value in <{name}>: {e}"))?;
            if fields
                .insert(key, Value::String(value.into_owned()))
                .is_some()
            {
                return Err(format!("<{name}> has the same attribute twice"));
            }
        }
        Ok(Frame {
            name,
            fields,
            text: String::new(),
        })
    }

    fn close(self) -> (String, Value) {
        let text = self.text.trim();
        let value = if self.fields.is_empty() {
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text.to_string())
            }
        } else {
            let mut fields = self.fields;
            if !text.is_empty() {
                fields.insert("#text".into(), Value::String(text.to_string()));
            }
            Value::Object(fields)
        };
        (self.name, value)
    }
}

/// XML 1.0 §2.11: `\r\n` and a lone `\r` are read as `\n`.
fn normalise_line_ends(raw: &str) -> String {
    raw.replace("\r\n", "\n").replace('\r', "\n")
}

/// XML 1.0 §3.3.3: literal tabs and line ends in an attribute value read as spaces
/// (before references are expanded, so `&#10;` stays a line feed).
fn normalise_attribute(raw: &str) -> String {
    normalise_line_ends(raw).replace(['\t', '\n'], " ")
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| "the document is not valid UTF-8".to_string())
}

/// Converts an XML document to JSON; the error is one human sentence.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "the XML is not well-formed at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::DocType(_) => {
                return Err("document type declarations (DTDs) are not accepted".into())
            }
            Event::Start(start) | Event::Empty(start) if root.is_some() && stack.is_empty() => {
                let _ = start;
                return Err("the XML has more than one root element".into());
            }
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("the XML nests deeper than {MAX_DEPTH} elements"));
                }
                stack.push(Frame::open(&start)?);
            }
            Event::Empty(start) => {
                let (name, value) = Frame::open(&start)?.close();
                match stack.last_mut() {
                    Some(parent) => add_repeated(&mut parent.fields, name, value),
                    None => root = Some(single(name, value)),
                }
            }
            Event::End(_) => {
                let frame = stack
                    .pop()
                    .ok_or("the XML closes an element it never opened")?;
                let (name, value) = frame.close();
                match stack.last_mut() {
                    Some(parent) => add_repeated(&mut parent.fields, name, value),
                    None => root = Some(single(name, value)),
                }
            }
            Event::Text(text) => {
                let raw = normalise_line_ends(&utf8(&text)?);
                let text = unescape(&raw).map_err(|e| {
                    format!("the XML has an entity or escape that is not allowed: {e}")
                })?;
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("the XML has text outside its root element".into()),
                }
            }
            Event::CData(data) => {
                let text = normalise_line_ends(&utf8(&data)?);
                match stack.last_mut() {
                    Some(frame) => frame.text.push_str(&text),
                    None => return Err("the XML has CDATA outside its root element".into()),
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the XML ends before its elements are closed".into());
    }
    root.ok_or_else(|| "the XML has no root element".to_string())
}

fn single(name: String, value: Value) -> Value {
    let mut map = Map::new();
    map.insert(name, value);
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(xml: &str) -> Value {
        to_json(xml.as_bytes()).unwrap()
    }

    #[test]
    fn attributes_text_and_repeats() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
            <order id="7" currency="EUR">
              <item sku="a">Pen</item>
              <item sku="b">Ink</item>
              <note>first &amp; only</note>
              <empty/>
              <blank></blank>
            </order>"#;
        assert_eq!(
            convert(xml),
            json!({"order": {
                "@id": "7", "@currency": "EUR",
                "item": [{"@sku": "a", "#text": "Pen"}, {"@sku": "b", "#text": "Ink"}],
                "note": "first & only",
                "empty": null,
                "blank": null
            }})
        );
    }

    #[test]
    fn namespaces_cdata_mixed_content_and_non_ascii() {
        let xml = r#"<s:Envelope xmlns:s="urn:x"><s:Body><![CDATA[<raw>]]></s:Body><p>a<b/>c</p><n>Zoë ✓</n><!-- c --></s:Envelope>"#;
        assert_eq!(
            convert(xml),
            json!({"s:Envelope": {
                "@xmlns:s": "urn:x",
                "s:Body": "<raw>",
                "p": {"b": null, "#text": "ac"},
                "n": "Zoë ✓"
            }})
        );
    }

    #[test]
    fn line_ends_and_attribute_whitespace_are_normalised() {
        // Expected values are what xmltodict (expat) gives for the same documents.
        assert_eq!(
            convert("<r a=\"x\ty\nz\" b=\"1&#10;2\"/>"),
            json!({"r": {"@a": "x y z", "@b": "1\n2"}})
        );
        assert_eq!(
            convert("<r>line1\r\nline2\rline3</r>"),
            json!({"r": "line1\nline2\nline3"})
        );
        assert_eq!(convert("<r a=\"p\r\nq\"/>"), json!({"r": {"@a": "p q"}}));
    }

    #[test]
    fn nested_repeats_keep_their_own_arrays() {
        let xml = "<r><g><i>1</i><i>2</i></g><g><i>3</i></g></r>";
        assert_eq!(
            convert(xml),
            json!({"r": {"g": [{"i": ["1", "2"]}, {"i": "3"}]}})
        );
    }

    #[test]
    fn dtds_and_unknown_entities_are_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        assert!(to_json(laughs.as_bytes()).unwrap_err().contains("DTD"));
        assert!(to_json(b"<a>&ext;</a>").unwrap_err().contains("entity"));
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "text",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<a>x</a>tail",
            "<a x='1' x='2'/>",
        ] {
            assert!(to_json(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(to_json(deep.as_bytes()).unwrap_err().contains("deeper"));
    }
}
