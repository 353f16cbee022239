//! Cost of one admission decision on a typical external host CREATE: the rules alone, the
//! mutation alone, `admit` for each webhook, and the whole decode + admit + encode path a
//! request body goes through (no TLS, no HTTP).

use bootvolume::{
    admission::{self, Review, ReviewResponse, Webhook},
    mutate, rules,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const FIXTURE: &str = include_str!("../tests/fixtures/admission/create_external_valid_allowed.json");

fn bench(c: &mut Criterion) {
    let policy = rules::Policy::default();
    let review: Review = serde_json::from_str(FIXTURE).expect("fixture is a review");
    let request = review.request.expect("request");
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let object = fixture["request"]["object"].to_string();
    let doc = bootvolume::api::parse_host(&object).expect("host");
    let view = doc.view();
    assert!(rules::validate(&policy, None, &view).allowed());
    assert!(!mutate::patch(&policy, "alice", None, &view).is_empty());

    c.bench_function("rules::validate", |b| {
        b.iter(|| rules::validate(black_box(&policy), None, black_box(&view)))
    });
    c.bench_function("mutate::patch", |b| {
        b.iter(|| mutate::patch(black_box(&policy), "alice", None, black_box(&view)))
    });
    c.bench_function("admission::admit validate", |b| {
        b.iter(|| admission::admit(black_box(&policy), Webhook::Validate, black_box(&request)))
    });
    c.bench_function("admission::admit mutate", |b| {
        b.iter(|| admission::admit(black_box(&policy), Webhook::Mutate, black_box(&request)))
    });
    let bytes = FIXTURE.as_bytes();
    for webhook in [Webhook::Validate, Webhook::Mutate] {
        c.bench_function(&format!("decode+admit+encode {}", webhook.label()), |b| {
            b.iter(|| {
                let review: Review = admission::http::parse(black_box(bytes)).expect("review");
                let request = review.request.expect("request");
                let outcome = admission::admit(&policy, webhook, &request);
                serde_json::to_vec(&ReviewResponse::from(outcome.response)).expect("encode")
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
