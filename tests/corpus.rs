//! The normalisation corpus, end to end over real sockets (SPEC §6): bodies posted to a
//! source that verifies nothing, then read back through the admin API as the event's
//! normalised `payload`. Covers XML (attributes, namespaces, repeated and nested repeated
//! children, mixed content, CDATA, entities and character references, empty elements,
//! prolog/comments/PIs, non-ASCII, whitespace between elements), refused XML (DTDs,
//! undefined entities, malformed documents), forms, accepted and refused content types,
//! and JSON kept byte for byte. Every XML expectation is `json.dumps(xmltodict.parse(xml))`
//! from the real xmltodict (1.0.4, default options), written here literally.

mod common;

use bytes::Bytes;
use common::*;
use hookgate::cli::client::Reply;
use hookgate::Running;
use http::StatusCode;
use serde_json::{json, Value};

const RAW_SOURCE: &str = r#"
[[sources]]
name = "raw"
scheme = "none"
insecure = true
"#;

async fn send(gw: &Running, content_type: &str, body: &[u8]) -> Reply {
    let request = (
        headers(&[("content-type", content_type)]),
        Bytes::copy_from_slice(body),
    );
    post(gw.ingest_addr, "/hooks/raw", request).await
}

/// Posts `body`, expects a 200, and returns the admin API's answer for its event.
async fn read_back(gw: &Running, case: &str, content_type: &str, body: &[u8]) -> Reply {
    let reply = send(gw, content_type, body).await;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, StatusCode::OK, "{case}: answered {text}");
    let seq = reply.json()["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{case}: no seq in {text}"));
    let event = admin_get(gw, &format!("/v1/events/{seq}")).await;
    assert_eq!(
        event.status,
        StatusCode::OK,
        "{case}: event {seq} unreadable"
    );
    event
}

async fn payload(gw: &Running, case: &str, content_type: &str, body: &[u8]) -> Value {
    read_back(gw, case, content_type, body).await.json()["payload"].clone()
}

fn assert_refused(reply: &Reply, case: &str, status: StatusCode, code: &str) {
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{case}: answered {text}");
    assert_eq!(reply.json()["error"], code, "{case}: answered {text}");
}

/// (case, XML body, `json.dumps(xmltodict.parse(body))`).
const XML_CASES: &[(&str, &str, &str)] = &[
    (
        "attributes",
        r##"<order id="7" currency="EUR"><item sku="a" qty="2">Pen</item><item sku="b">Ink</item></order>"##,
        r##"{"order": {"@id": "7", "@currency": "EUR", "item": [{"@sku": "a", "@qty": "2", "#text": "Pen"}, {"@sku": "b", "#text": "Ink"}]}}"##,
    ),
    (
        "namespaces",
        r##"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:default"><s:Body><m:Ping xmlns:m="urn:m" m:level="high">yes</m:Ping><plain>d</plain></s:Body></s:Envelope>"##,
        r##"{"s:Envelope": {"@xmlns:s": "http://schemas.xmlsoap.org/soap/envelope/", "@xmlns": "urn:default", "s:Body": {"m:Ping": {"@xmlns:m": "urn:m", "@m:level": "high", "#text": "yes"}, "plain": "d"}}}"##,
    ),
    (
        "repeated children",
        r##"<r><g><i>1</i><i>2</i></g><g><i>3</i></g><k>x</k><m/><k>y</k><k>z</k></r>"##,
        r##"{"r": {"g": [{"i": ["1", "2"]}, {"i": "3"}], "k": ["x", "y", "z"], "m": null}}"##,
    ),
    (
        "mixed content",
        r##"<p lang="en">Hello <b>world</b> and <i>all</i>!</p>"##,
        r##"{"p": {"@lang": "en", "b": "world", "i": "all", "#text": "Hello  and !"}}"##,
    ),
    (
        "cdata",
        r##"<c><code><![CDATA[if (a < b && c > d) { x = "<y/>"; }]]></code><mix>pre <![CDATA[<raw>]]> post</mix></c>"##,
        r##"{"c": {"code": "if (a < b && c > d) { x = \"<y/>\"; }", "mix": "pre <raw> post"}}"##,
    ),
    (
        "entities",
        r##"<e q="&quot;hi&quot; &amp; &apos;bye&apos; &#233;"><t>&amp; &lt; &gt; &quot; &apos;</t><n>caf&#233; &#x263A;</n></e>"##,
        r##"{"e": {"@q": "\"hi\" & 'bye' é", "t": "& < > \" '", "n": "café ☺"}}"##,
    ),
    (
        "empty elements",
        r##"<e><a/><b></b><c x="1"/><d x="1"></d><z/><z></z></e>"##,
        r##"{"e": {"a": null, "b": null, "c": {"@x": "1"}, "d": {"@x": "1"}, "z": [null, null]}}"##,
    ),
    (
        "declaration comments and pis",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- head --><?app go?>\n<doc><!-- inner --><?pi data?><v>1<!-- split -->2</v></doc>\n<!-- tail -->\n",
        r##"{"doc": {"v": "12"}}"##,
    ),
    (
        "non-ascii",
        r##"<ü name="Zoë 日本"><城市>Zürich — ☃ 😀</城市></ü>"##,
        r##"{"ü": {"@name": "Zoë 日本", "城市": "Zürich — ☃ 😀"}}"##,
    ),
    (
        "whitespace between elements",
        "<w>\n  <a>1</a>\n  <b>   </b>\n\t<c>  padded  </c>\n</w>",
        r##"{"w": {"a": "1", "b": null, "c": "padded"}}"##,
    ),
    (
        "attribute whitespace normalised",
        "<r a=\"x\ty\nz\" b=\"1&#10;2\"/>",
        r##"{"r": {"@a": "x y z", "@b": "1\n2"}}"##,
    ),
    (
        "line ends normalised",
        "<r>line1\r\nline2\rline3<s a=\"p\r\nq\"/></r>",
        r##"{"r": {"s": {"@a": "p q"}, "#text": "line1\nline2\nline3"}}"##,
    ),
];

#[tokio::test]
async fn xml_reads_back_as_xmltodict_parses_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", RAW_SOURCE).await;
    for (i, (case, xml, expected)) in XML_CASES.iter().enumerate() {
        let expected: Value = serde_json::from_str(expected)
            .unwrap_or_else(|e| panic!("{case}: the expectation is not JSON: {e}"));
        // Each body once (a distinct content-hash id); the two XML types take turns.
        let content_type = ["application/xml", "text/xml"][i % 2];
        let got = payload(&gw, case, content_type, xml.as_bytes()).await;
        assert_eq!(got, expected, "{case} ({content_type})");
    }
    gw.stop().await;
}

/// The classic billion laughs: ten levels of entities, each ten of the one below.
fn billion_laughs() -> String {
    let mut dtd = String::from(r#"<!ENTITY lol0 "lol">"#);
    for n in 1..10 {
        let below = format!("&lol{};", n - 1).repeat(10);
        dtd.push_str(&format!(r#"<!ENTITY lol{n} "{below}">"#));
    }
    format!(r#"<?xml version="1.0"?><!DOCTYPE lolz [{dtd}]><lolz>&lol9;</lolz>"#)
}

#[tokio::test]
async fn dtds_unknown_entities_and_malformed_xml_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", RAW_SOURCE).await;
    let cases = [
        ("billion laughs", billion_laughs()),
        (
            "external entity",
            r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#.into(),
        ),
        ("undefined entity", "<x>&nope;</x>".into()),
        ("unclosed tag", "<x><y>1</x>".into()),
        ("two root elements", "<a/><b/>".into()),
    ];
    for (case, xml) in &cases {
        let reply = send(&gw, "application/xml", xml.as_bytes()).await;
        assert_refused(&reply, case, StatusCode::BAD_REQUEST, "malformed_body");
    }
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"], json!([]), "nothing refused is journaled");
    gw.stop().await;
}

#[tokio::test]
async fn forms_read_back_as_objects_of_strings() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", RAW_SOURCE).await;
    let form = "application/x-www-form-urlencoded";
    let cases = [
        (
            "repeated names become an array in order",
            "a=1&b=x&a=2&a=3",
            json!({"a": ["1", "2", "3"], "b": "x"}),
        ),
        (
            "'+' and %20 are spaces, %2B a plus",
            "s=x+y%20z&first+name=Ann&p=%2B1",
            json!({"s": "x y z", "first name": "Ann", "p": "+1"}),
        ),
        ("empty values", "a=&b=", json!({"a": "", "b": ""})),
        (
            "a name with no '='",
            "flag&k=v",
            json!({"flag": "", "k": "v"}),
        ),
        (
            "percent-encoded UTF-8",
            "name=Zo%C3%AB&city=Z%C3%BCrich",
            json!({"name": "Zoë", "city": "Zürich"}),
        ),
        (
            "escaped '&' and '=' inside values",
            "q=a%26b%3Dc&r=1=2",
            json!({"q": "a&b=c", "r": "1=2"}),
        ),
    ];
    for (case, body, expected) in &cases {
        let got = payload(&gw, case, form, body.as_bytes()).await;
        assert_eq!(&got, expected, "{case}: {body}");
    }
    for (case, body) in [
        ("invalid UTF-8 value", "bad=%FF"),
        ("invalid UTF-8 name", "n%FF=1"),
    ] {
        let reply = send(&gw, form, body.as_bytes()).await;
        assert_refused(&reply, case, StatusCode::BAD_REQUEST, "malformed_body");
    }
    gw.stop().await;
}

#[tokio::test]
async fn content_types_and_charsets() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", RAW_SOURCE).await;
    let accepted = [
        (
            "json with charset=utf-8",
            "application/json; charset=utf-8",
            r#"{"ct":1}"#,
            json!({"ct": 1}),
        ),
        (
            "vendor +json",
            "application/vnd.api+json",
            r#"{"data":{"type":"ct","id":"2"}}"#,
            json!({"data": {"type": "ct", "id": "2"}}),
        ),
        (
            "xml with a quoted charset",
            r#"application/xml; charset="UTF-8""#,
            r#"<ct n="3">utf</ct>"#,
            // xmltodict: {"ct": {"@n": "3", "#text": "utf"}}
            json!({"ct": {"@n": "3", "#text": "utf"}}),
        ),
    ];
    for (case, content_type, body, expected) in &accepted {
        let got = payload(&gw, case, content_type, body.as_bytes()).await;
        assert_eq!(&got, expected, "{case}");
    }
    let refused = [
        ("text/plain", "text/plain", "hello", 415),
        (
            "json in latin-1",
            "application/json; charset=iso-8859-1",
            r#"{"ct":4}"#,
            415,
        ),
        ("truncated json", "application/json", r#"{"ct":"#, 400),
    ];
    for (case, content_type, body, status) in refused {
        let reply = send(&gw, content_type, body.as_bytes()).await;
        let (status, code) = match status {
            415 => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            _ => (StatusCode::BAD_REQUEST, "malformed_body"),
        };
        assert_refused(&reply, case, status, code);
    }
    gw.stop().await;
}

#[tokio::test]
async fn json_is_kept_byte_for_byte_with_its_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", RAW_SOURCE).await;
    let body = "{ \"zeta\" :1,\"alpha\":  [ 2 ,3.50 ],\n  \"mid\":{\"y\":null , \"b\":\"caf\\u00e9 é\"} ,\"big\":12345678901234567890}";
    let event = read_back(&gw, "odd json", "application/json", body.as_bytes()).await;
    assert!(
        event.body.windows(body.len()).any(|w| w == body.as_bytes()),
        "the payload is embedded as received: {}",
        String::from_utf8_lossy(&event.body)
    );
    let event = event.json();
    let parsed: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["payload"], parsed);
    assert_eq!(event["size"], body.len());
    // Value equality ignores key order; the serialisations do not.
    assert_eq!(
        serde_json::to_string(&event["payload"]).unwrap(),
        serde_json::to_string(&parsed).unwrap(),
        "key order is kept"
    );
    let keys: Vec<&str> = event["payload"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["zeta", "alpha", "mid", "big"]);
    gw.stop().await;
}
