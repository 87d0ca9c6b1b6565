//! Grafana Pyroscope's ingestion API, as its /ingest handler reads it (and
//! Alloy's pyroscope.receive_http forwards it): `POST /ingest?name=
//! APP{k=v,...}&from=S&until=S&format=pprof&spyName=...`, the body the raw
//! (here gzipped) profile.proto. With `format=pprof` Pyroscope reads the
//! body as the profile itself, not as a multipart form. It names the
//! series from the sample types, never from a `__name__` in the query
//! (labels starting with `__` are dropped): `memory` when one is alloc_*,
//! inuse_*, `space` or `objects`, else the last sample type's name. So the
//! windows are `memory` (memory:alloc_space:bytes:space:bytes and the
//! others) and the types profile, whose last sample type is `types`, is
//! `types` (types:types:bytes:objects:count). `service_name` comes from the
//! labels.

use super::{EncodedWindow, Endpoint, http::Request};
use crate::labels;

pub const SPY_NAME: &str = "tracer";

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `APP{k=v,...}`: the app is the service name, which the labels carry too.
pub fn name(window: &EncodedWindow) -> String {
    let service = window
        .labels
        .get("service_name")
        .map_or("unknown", String::as_str);
    let tags: Vec<String> = window
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}{{{}}}", labels::app_name(service), tags.join(","))
}

pub fn request(window: &EncodedWindow, endpoint: &Endpoint) -> Request {
    let from = window.start_unix_ns / 1_000_000_000;
    // Pyroscope's times are seconds: a window is never empty.
    let until = (window.end_unix_ns / 1_000_000_000).max(from + 1);
    let url = format!(
        "{}/ingest?name={}&from={from}&until={until}&format=pprof&spyName={SPY_NAME}",
        endpoint.url.trim_end_matches('/'),
        encode(&name(window)),
    );
    Request {
        url,
        content_type: "application/octet-stream",
        body: window.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_labels_and_are_encoded() {
        let window = EncodedWindow {
            profile: crate::sinks::push::ProfileName::Memory,
            labels: labels::Labels::from([
                ("service_name".to_owned(), "billing api".to_owned()),
                ("host".to_owned(), "h1".to_owned()),
            ]),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_015_000_000_000,
            body: vec![1, 2],
        };
        assert_eq!(
            name(&window),
            "billing_api{host=h1,service_name=billing api}"
        );
        let endpoint = Endpoint {
            url: "http://p:4040/".into(),
            tenant: None,
            auth: None,
        };
        let r = request(&window, &endpoint);
        assert_eq!(
            r.url,
            "http://p:4040/ingest?name=billing_api%7Bhost%3Dh1%2Cservice_name%3Dbilling%20api%7D&from=1700000000&until=1700000015&format=pprof&spyName=tracer"
        );
        assert_eq!(r.body, [1, 2]);
    }
}
