//! Parca's profile store, `WriteRaw`, through its HTTP gateway
//! (grpc-gateway under `/api`): `POST /api/profiles/writeraw` with the
//! JSON form of `WriteRawRequest` — a series of labels (`__name__`
//! required: the profile's name, `memory` or `types`) and the profile.proto
//! bytes in base64. Parca names what it stores after `__name__` and each
//! sample type: `memory:alloc_space:bytes:space:bytes:delta` (`:delta`, the
//! window having a duration), `types:types:bytes:objects:count` (a walk is
//! an instant).

use base64::Engine as _;
use serde::Serialize;

use super::{EncodedWindow, Endpoint, http::Request};

pub const PATH: &str = "/api/profiles/writeraw";

#[derive(Serialize)]
struct WriteRawRequest<'a> {
    series: [RawProfileSeries<'a>; 1],
    /// Addresses are file offsets already (symbolized frames besides).
    normalized: bool,
}

#[derive(Serialize)]
struct RawProfileSeries<'a> {
    labels: LabelSet<'a>,
    samples: [RawSample; 1],
}

#[derive(Serialize)]
struct LabelSet<'a> {
    labels: Vec<Label<'a>>,
}

#[derive(Serialize)]
struct Label<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct RawSample {
    /// protojson's form of `bytes`: standard base64.
    raw_profile: String,
}

pub fn request(window: &EncodedWindow, endpoint: &Endpoint) -> Request {
    let mut labels = vec![Label {
        name: "__name__",
        value: window.profile.name(),
    }];
    labels.extend(
        window
            .labels
            .iter()
            .map(|(k, v)| Label { name: k, value: v }),
    );
    let body = WriteRawRequest {
        series: [RawProfileSeries {
            labels: LabelSet { labels },
            samples: [RawSample {
                raw_profile: base64::engine::general_purpose::STANDARD.encode(&window.body),
            }],
        }],
        normalized: true,
    };
    Request {
        url: format!("{}{PATH}", endpoint.url.trim_end_matches('/')),
        content_type: "application/json",
        // Serializing plain strings and vectors cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::push::ProfileName;

    #[test]
    fn the_request_is_write_raw_in_json() {
        let window = EncodedWindow {
            profile: ProfileName::Memory,
            labels: crate::labels::Labels::from([("service_name".to_owned(), "app".to_owned())]),
            start_unix_ns: 0,
            end_unix_ns: 1,
            body: vec![0x1f, 0x8b],
        };
        let endpoint = Endpoint {
            url: "http://parca:7070".into(),
            tenant: None,
            auth: None,
        };
        let r = request(&window, &endpoint);
        assert_eq!(r.url, "http://parca:7070/api/profiles/writeraw");
        let json: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        let series = &json["series"][0];
        assert_eq!(series["labels"]["labels"][0]["name"], "__name__");
        assert_eq!(series["labels"]["labels"][0]["value"], "memory");
        assert_eq!(series["labels"]["labels"][1]["name"], "service_name");
        assert_eq!(series["samples"][0]["raw_profile"], "H4s=");
        let types = EncodedWindow {
            profile: ProfileName::Types,
            ..window
        };
        let json: serde_json::Value =
            serde_json::from_slice(&request(&types, &endpoint).body).expect("json");
        assert_eq!(json["series"][0]["labels"]["labels"][0]["value"], "types");
    }
}
