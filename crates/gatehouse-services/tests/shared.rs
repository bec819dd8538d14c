//! The Redis counters on their own, against the machine's Redis: what the gateway tests
//! cannot do in-process, such as an instance that dies with requests in flight.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test where they fail"
)]

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::{OnError, RedisConfig};
use gatehouse_core::ErrorKind;
use gatehouse_services::Keys;
use gatehouse_services::keys::{self, KeyChange, KeyEntry};
use gatehouse_services::shared::{self, Shared};
use serde_json::json;

fn config(prefix: &str, lease_secs: u64) -> RedisConfig {
    RedisConfig {
        url: std::env::var("GATEHOUSE_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        on_error: OnError::Closed,
        prefix: prefix.to_owned(),
        timeout_ms: 500,
        lease_secs,
    }
}

/// A registry holding one key with `limits`, as an instance has it.
fn instance_with(limits: serde_json::Value) -> (Keys, Arc<KeyEntry>) {
    let change: KeyChange = serde_json::from_value(limits).unwrap();
    let (_, record) = keys::create(change, gatehouse_core::time::now_ms()).unwrap();
    let id = record.id.clone();
    let k = Keys::new();
    k.apply(record, None);
    let e = k.get(&id).unwrap();
    (k, e)
}

fn now() -> i64 {
    gatehouse_core::time::now_ms()
}

#[tokio::test]
async fn places_left_by_an_instance_that_died_are_freed_by_their_lease() {
    let prefix = format!("u-{}", uuid::Uuid::now_v7().simple());
    let sh = Shared::open(&config(&prefix, 1), "dead").unwrap().unwrap();
    let (_reg, key) = instance_with(json!({"name": "one", "max_parallel_requests": 1}));

    let held = shared::admit(Some(&sh), &key, 10, None, now())
        .await
        .unwrap();
    assert!(held.ticket.is_some(), "counted in Redis");
    // The instance dies: nothing settles or gives back its request.
    std::mem::forget(held);
    let refused = shared::admit(Some(&sh), &key, 10, None, now())
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::TooManyConcurrentRequests);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = shared::admit(Some(&sh), &key, 10, None, now()).await;
    assert!(
        again.is_ok(),
        "the lease ended and freed the place: {again:?}"
    );
}

#[tokio::test]
async fn a_reservation_dropped_unsettled_is_given_back() {
    let prefix = format!("u-{}", uuid::Uuid::now_v7().simple());
    let sh = Shared::open(&config(&prefix, 60), "a").unwrap().unwrap();
    let (_reg, key) = instance_with(json!({"name": "b", "max_budget_usd": 1.0, "tpm": 1000}));
    // Reserves $0.6 and 600 tokens; a second one does not fit either.
    let first = shared::admit(Some(&sh), &key, 600, Some(0.6), now())
        .await
        .unwrap();
    let e = shared::admit(Some(&sh), &key, 100, Some(0.6), now())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BudgetExceeded, "{}", e.message);
    assert!(e.message.contains("$0.600000 reserved"), "{}", e.message);
    let e = shared::admit(Some(&sh), &key, 600, Some(0.1), now())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimitExceeded, "{}", e.message);
    // Refused before upstream: dropped, it gives everything back (asynchronously).
    drop(first);
    let mut fits = false;
    for _ in 0..50 {
        if let Ok(a) = shared::admit(Some(&sh), &key, 600, Some(0.6), now()).await {
            // Settled with what it used: 50 tokens, $0.05.
            let s = shared::settle(Some(&sh), a.ticket, a.reservation, 50, 0.05).await;
            assert!((s.key.spend.spend_usd - 0.05).abs() < 1e-9, "{:?}", s.key);
            fits = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fits, "the dropped reservation was never given back");
    let (spend, reserved) = key.spend(now());
    assert!((spend.spend_usd - 0.05).abs() < 1e-9 && reserved == 0.0);
}

#[tokio::test]
async fn a_soft_budget_is_announced_by_one_instance_only() {
    let prefix = format!("u-{}", uuid::Uuid::now_v7().simple());
    let a = Shared::open(&config(&prefix, 60), "a").unwrap().unwrap();
    let b = Shared::open(&config(&prefix, 60), "b").unwrap().unwrap();
    let (_ra, ka) = instance_with(json!({"name": "soft", "soft_budget_usd": 0.1}));
    // The same key on a second instance: the same record, its own registry.
    let kb_reg = Keys::new();
    kb_reg.apply((*ka.record()).clone(), None);
    let kb = kb_reg.get(&ka.id).unwrap();
    let mut crossed = 0;
    for (sh, k) in [(&a, &ka), (&b, &kb), (&a, &ka), (&b, &kb)] {
        let adm = shared::admit(Some(sh), k, 10, Some(0.0), now())
            .await
            .unwrap();
        let s = shared::settle(Some(sh), adm.ticket, adm.reservation, 10, 0.04).await;
        crossed += usize::from(s.key.soft_crossed.is_some());
    }
    assert_eq!(crossed, 1, "crossed once, announced once");
    assert!((kb.spend(now()).0.spend_usd - 0.16).abs() < 1e-9);
}
