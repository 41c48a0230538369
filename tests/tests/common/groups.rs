//! Helpers of the consumer-group tests: group metadata, members settling on one epoch, and
//! reading from several members at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use liftbridge_client::GroupConsumer;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::{ConsumerGroupMetadata, FetchMetadataRequest};
use tonic::transport::Channel;

/// The metadata of one group, as FetchMetadata gives it.
pub async fn group_md(c: &mut ApiClient<Channel>, group: &str) -> ConsumerGroupMetadata {
    c.fetch_metadata(FetchMetadataRequest {
        groups: vec![group.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .group_metadata
    .remove(0)
}

/// Waits (up to `within`) until every member holds assignments at one epoch that together
/// cover `total` partitions, each once; returns that epoch. A member that has not fetched its
/// assignments yet shows `(0, [])`, so each member must hold at least one partition.
pub async fn settled(members: &[&GroupConsumer], total: usize, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<(u64, Vec<(String, i32)>)> =
            members.iter().map(|m| m.assignments()).collect();
        let same = views.windows(2).all(|w| w[0].0 == w[1].0);
        let mut all: Vec<(String, i32)> = views.iter().flat_map(|v| v.1.clone()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        if same && n == total && all.len() == total && views.iter().all(|v| !v.1.is_empty()) {
            return views[0].0;
        }
        assert!(Instant::now() < deadline, "never settled: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`drain`] does with an error from a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The test fails.
    Fail,
    /// It is skipped (a broker is being stopped under the members).
    Skip,
}

/// Reads from every member until `n` messages with `tag` arrived in total (within `within`);
/// returns, by value, each delivery as `member@epoch[partitions]/p<partition>o<offset>`, so a
/// failure shows how two members came to read one message.
pub async fn drain(
    members: &mut [&mut GroupConsumer],
    tag: &str,
    n: usize,
    within: Duration,
    on_error: OnError,
) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + within;
    let mut count = 0;
    while count < n {
        assert!(Instant::now() < deadline, "only {count} of {n}: {got:?}");
        for m in members.iter_mut() {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(20), m.next()).await
            else {
                continue;
            };
            let msg = match (msg, on_error) {
                (Ok(msg), _) => msg,
                (Err(_), OnError::Skip) => continue,
                (Err(e), OnError::Fail) => panic!("a message: {e:?}"),
            };
            let v = String::from_utf8(msg.value.to_vec()).unwrap();
            count += usize::from(v.starts_with(tag));
            let (epoch, owned) = m.assignments();
            let owned: Vec<i32> = owned.iter().map(|(_, p)| *p).collect();
            got.entry(v).or_default().push(format!(
                "{}@{epoch}{owned:?}/p{}o{}",
                m.id(),
                msg.partition,
                msg.offset
            ));
        }
    }
    got
}
