//! RetrievalIndex on the 10,005-item test pool of the default 50,025-item catalog: `select` for
//! actions asking for 1, 3 and 6 values, with 0 and 40 items already shown in the session, and
//! building the index.
//!
//! Run: `cargo bench -p irec-world --bench retrieval` (figures in docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use irec_world::catalog::{generate, Action, Attribute, GeneratorConfig};
use irec_world::retrieval::RetrievalIndex;
use irec_world::rng;
use std::hint::black_box;

/// Attributes asked for by the 1-, 3- and 6-value actions.
const ASKED: [&[Attribute]; 3] = [
    &[Attribute::Category],
    &[Attribute::Category, Attribute::Gender, Attribute::ToeStyle],
    &Attribute::ALL,
];

fn retrieval(c: &mut Criterion) {
    let catalog = generate(&GeneratorConfig::default());
    let truth = catalog.truth();
    let pool = &catalog.split.test;
    assert_eq!(pool.len(), 10_005);

    c.bench_function("build_index/test_pool_10005", |b| {
        b.iter(|| RetrievalIndex::new(black_box(&catalog.schema), black_box(pool), black_box(&truth)))
    });

    let index = RetrievalIndex::new(&catalog.schema, pool, &truth);
    // A target with every cell filled, so each action asks for values that exist.
    let target = *pool
        .iter()
        .find(|id| Attribute::ALL.iter().all(|a| truth[**id as usize].set(*a) != 0))
        .expect("a fully labelled test item");
    let mut group = c.benchmark_group("select");
    for asked in ASKED {
        let action = asked.iter().fold(Action::default(), |act, a| {
            act.with_value(*a, truth[target as usize].values(*a).next())
        });
        for shown_count in [0usize, 40] {
            // The items a session asking this action would have shown so far.
            let mut shown = index.empty_shown();
            let mut r = rng::rng(7);
            for _ in 0..shown_count {
                let (pos, _) = index.select(&action, &shown, &mut r).expect("the pool is large");
                shown.insert(pos);
            }
            let mut r = rng::rng(11);
            group.bench_with_input(
                BenchmarkId::new(format!("values={}", asked.len()), format!("shown={shown_count}")),
                &(action, shown),
                |b, (action, shown)| b.iter(|| index.select(black_box(action), black_box(shown), &mut r)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, retrieval);
criterion_main!(benches);
