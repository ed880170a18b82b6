//! Property-based fuzz targets for every parser of input that comes from outside a process, run
//! as ordinary tests on the stable toolchain (proptest; cargo-fuzz needs nightly, which these
//! machines do not have). Each file in `tests/` is one target:
//!
//! - `frames.rs`: the frames a WebSocket client sends (`proto::frame::ClientFrame`, parsed by the
//!   gateway's read loop), against a model of what the protocol page allows.
//! - `bodies.rs`: every HTTP request body type, through serde and through `kit`'s `Json`
//!   extractor (whose refusals must be the JSON envelope), with values generated from each type's
//!   own OpenAPI schema so that what the document promises is what the server takes.
//! - `stream.rs`: the decoder of gateway stream entries and receipts (`bus::redis`), on arbitrary
//!   field maps, and end to end through a real Redis stream.
//! - `config.rs`: the configuration loader on arbitrary YAML files and environment values: a
//!   clear error naming the setting, never a panic.
//!
//! This library holds what the targets share: hostile strings and numbers, arbitrary JSON, byte
//! soup that is almost JSON, and a generator of values from a JSON Schema.
//!
//! Time is bounded by the case count: `PROPTEST_CASES` (proptest's default 256; `scripts/test.sh`
//! sets the CI budget), scaled down by [`config_scaled`] for targets whose cases cost a round
//! trip. A failing case is saved, shrunk, in `tests/<target>.regressions` beside the target and
//! replayed first on every later run: commit that file with the fix.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Map, Number, Value};

/// The config of a target: cases from `PROPTEST_CASES`, failures kept beside the target's file.
pub fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

/// [`config`] with `1/divisor` of the cases (at least one), for targets whose every case makes
/// a round trip to a server.
pub fn config_scaled(divisor: u32) -> Config {
    let c = config();
    Config {
        cases: (c.cases / divisor.max(1)).max(1),
        ..c
    }
}

/// Runs `test` on `cases` values of `strategy` under `config` (with `file!()` as `source`, for
/// the regressions file): what `proptest!` does, for targets that set up a server once and reuse
/// it across cases. Panics with the shrunk failing input.
pub fn check<S: Strategy>(
    config: Config,
    source: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        source_file: Some(source),
        ..config
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// Integers where parsers and arithmetic break: the ends of every width, the 2^53 limit of ids,
/// small ones, and any.
pub fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => any::<i64>(),
        3 => -3i64..1_000,
        2 => prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            -(1 << 53),
            -1,
            0,
            1,
            i64::from(i32::MAX),
            i64::from(u32::MAX),
            (1 << 53) - 1,
            1 << 53,
            i64::MAX - 1,
            i64::MAX,
        ]),
    ]
}

/// A JSON number: an edge integer, one above `i64::MAX`, or a finite float (`7.0` included).
pub fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        4 => edge_i64().prop_map(Number::from),
        1 => any::<u64>().prop_map(Number::from),
        1 => prop::sample::select(vec![0.0, -0.0, 7.0, 0.5, 1e300, -1e-300, 9_007_199_254_740_993.0])
            .prop_map(|f| Number::from_f64(f).expect("finite")),
        1 => any::<f64>().prop_filter_map("finite", Number::from_f64),
    ]
}

/// Strings a careless or hostile client sends: any Unicode (controls, NUL, right-to-left marks,
/// astral planes), blanks, words the protocol knows, and long ones.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        2 => "[a-z_]{0,12}",
        2 => prop::sample::select(vec![
            "", " ", "\t", "\0", "\u{202e}", "\u{1F600}", "null", "true", "0", "-1", "1e999",
            "text", "image", "file", "owner", "admin", "member", "ack", "sync", "ping", "chat",
            "http://", "https://example.com/a.png", "a,b,,c", "${HOME}", "~", "0x10",
        ])
        .prop_map(str::to_owned),
        1 => prop::collection::vec(any::<char>(), 200..2_000).prop_map(String::from_iter),
    ]
}

/// Any JSON value, nested a few levels deep.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6).prop_map(object),
        ]
    })
    .boxed()
}

/// A JSON object whose keys are mostly `keys` (some left out, some repeated as other types)
/// plus now and then a stranger, with `values` for each: the near misses of a known shape.
pub fn object_with<K: Into<String>>(
    keys: impl IntoIterator<Item = K>,
    values: impl Strategy<Value = Value> + Clone + 'static,
) -> impl Strategy<Value = Value> {
    let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
    let n = keys.len();
    let key = prop_oneof![
        6 => prop::sample::select(keys),
        1 => "[a-z_]{1,10}",
    ];
    prop::collection::btree_map(key, values, 0..=n + 1).prop_map(object)
}

fn object(m: BTreeMap<String, Value>) -> Value {
    Value::Object(m.into_iter().collect::<Map<_, _>>())
}

/// Bytes that are JSON, almost JSON, or not at all: a value's text cut short, with a byte
/// changed or inserted, nested past any sane depth, or plain random bytes.
pub fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    let text = json_value()
        .prop_map(|v| v.to_string().into_bytes())
        .boxed();
    prop_oneof![
        3 => text.clone(),
        2 => (text.clone(), any::<prop::sample::Index>())
            .prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec()),
        2 => (text, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, x)| {
            let at = i.index(b.len() + 1);
            b.insert(at, x);
            b
        }),
        1 => (1usize..3_000, prop::bool::ANY).prop_map(|(n, arrays)| if arrays {
            format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
        } else {
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// [`json_bytes`] made valid UTF-8 (what a WebSocket text frame or an env variable can carry).
pub fn json_text() -> impl Strategy<Value = String> {
    json_bytes().prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Values that a JSON Schema (as a serialized OpenAPI 3.1 schema object) admits, resolving
/// `$ref`s to `#/components/schemas/<name>` in `components`. Covers what the services' documents
/// use: `type` (one or a list), `enum`, `oneOf`/`anyOf`/`allOf`, `properties` with `required`,
/// `items`, integer bounds and string lengths and patterns; anything else admits any value.
pub fn from_schema(schema: &Value, components: &Map<String, Value>) -> BoxedStrategy<Value> {
    from_schema_at(schema, components, 0)
}

fn from_schema_at(
    schema: &Value,
    components: &Map<String, Value>,
    depth: u32,
) -> BoxedStrategy<Value> {
    // Recursive schemas (none so far) would otherwise recurse forever.
    if depth > 8 {
        return Just(Value::Null).boxed();
    }
    let next = |s: &Value| from_schema_at(s, components, depth + 1);
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        return match components.get(name) {
            Some(target) => next(target),
            None => panic!("schema refers to {r}, which the components do not have"),
        };
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return prop::sample::select(values.clone()).boxed();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let alts: Vec<BoxedStrategy<Value>> = alts.iter().map(next).collect();
            return prop::strategy::Union::new(alts).boxed();
        }
    }
    if let Some([one]) = schema
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return next(one);
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => return json_value().boxed(),
    };
    let alts: Vec<BoxedStrategy<Value>> = types
        .into_iter()
        .map(|t| match t {
            "null" => Just(Value::Null).boxed(),
            "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
            "integer" => integer(schema),
            "number" => any::<f64>()
                .prop_filter_map("finite", Number::from_f64)
                .prop_map(Value::Number)
                .boxed(),
            "string" => string(schema),
            "array" => {
                let items = schema
                    .get("items")
                    .map_or_else(|| json_value().boxed(), next);
                let min = bound(schema, "minItems").unwrap_or(0) as usize;
                let max = bound(schema, "maxItems").map_or(min + 5, |m| m as usize);
                prop::collection::vec(items, min..=max.max(min))
                    .prop_map(Value::Array)
                    .boxed()
            }
            "object" => {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let props: Vec<(String, bool, BoxedStrategy<Value>)> = schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .map(|(k, s)| (k.clone(), required.contains(&k.as_str()), next(s)))
                            .collect()
                    })
                    .unwrap_or_default();
                let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = props
                    .into_iter()
                    .map(|(k, req, s)| {
                        let pair = s.prop_map(move |v| (k.clone(), v));
                        if req {
                            pair.prop_map(Some).boxed()
                        } else {
                            prop::option::of(pair).boxed()
                        }
                    })
                    .collect();
                fields
                    .prop_map(|fs| Value::Object(fs.into_iter().flatten().collect()))
                    .boxed()
            }
            other => panic!("schema type {other:?} is not generated"),
        })
        .collect();
    prop::strategy::Union::new(alts).boxed()
}

fn bound(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(Value::as_u64)
}

fn integer(schema: &Value) -> BoxedStrategy<Value> {
    // Bounds may be written as floats (`1.0`); a `u64`'s beyond i64 are clamped.
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64).map(|f| f as i64);
    let min = bound("minimum").unwrap_or(i64::MIN);
    let max = bound("maximum").unwrap_or(i64::MAX);
    prop_oneof![edge_i64().prop_map(move |n| n.clamp(min, max)), (min..=max),]
        .prop_map(|n| Value::Number(n.into()))
        .boxed()
}

fn string(schema: &Value) -> BoxedStrategy<Value> {
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // The generator takes no anchors; a schema pattern is anchored by `^...$` anyway.
        let p = p.trim_start_matches('^').trim_end_matches('$');
        return prop::string::string_regex(p)
            .unwrap_or_else(|e| panic!("schema pattern {p:?} is not generated: {e}"))
            .prop_map(Value::String)
            .boxed();
    }
    let min = bound(schema, "minLength").unwrap_or(0) as usize;
    let max = bound(schema, "maxLength").map_or(min + 40, |m| m as usize);
    prop::collection::vec(any::<char>(), min..=max.max(min))
        .prop_map(|cs| Value::String(cs.into_iter().collect()))
        .boxed()
}
