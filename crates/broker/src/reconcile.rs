//! Reconcile: every metadata event, and a tick each second, compares the metadata with the
//! running partitions and opens, restarts or stops them; the metadata leader creates the
//! internal streams and records activity events.
//!
//! # How partitions follow the metadata
//! [`Broker::reconcile`] reads the metadata and, for each partition this server holds a replica
//! of, opens, restarts (when its leader, epoch, ISR or paused flag changed), or stops the local
//! partition. A stream that disappeared from the metadata has its data deleted. Nothing happens
//! while the metadata node replays its log after a restart, so a stream deleted and re-created
//! during the replay keeps its data.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use liftbridge_proto::api::{self};
use liftbridge_proto::internal::{self};
use metastore::Event;
use metastore::service::WatchEvent;
use slog::{info, warn};

use crate::broker::*;
use crate::error::BrokerError;
use crate::partition::{Partition, Role, Spec, now_nanos};

impl Broker {
    pub(crate) async fn metadata_loop(&self) {
        let mut events = self.inner.meta.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(WatchEvent::Role { leader: true, .. }) => {
                        let b = self.clone();
                        tokio::spawn(async move { b.ensure_internal_streams().await });
                    }
                    Ok(WatchEvent::Applied { index, recovered: false, event }) => {
                        if self.inner.cfg.activity.enabled {
                            self.record_activity(index, &event);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if self.inner.meta.is_leader() {
                        self.ensure_internal_streams().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
            self.reconcile().await;
        }
    }

    /// Brings the local partitions in line with the metadata (see the module docs).
    pub(crate) async fn reconcile(&self) {
        let _guard = self.inner.reconciling.lock().await;
        let me = self.inner.cfg.server_id.clone();
        let defaults = self.inner.cfg.streams.clone();
        let min_isr = self.inner.cfg.min_insync_replicas;
        // What the metadata wants, read in one go.
        let Some(wanted) = self.inner.meta.with_state(|f| {
            if f.is_recovering() {
                return None;
            }
            let mut out = Vec::new();
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                for p in s.partitions.values() {
                    if !p.replicas.contains(&me) {
                        continue;
                    }
                    out.push((
                        (s.name.clone(), p.id),
                        s.subject.clone(),
                        s.creation_timestamp,
                        defaults.settings(&s.config, min_isr),
                        Role {
                            leader: p.leader == me,
                            leader_id: p.leader.clone(),
                            leader_epoch: p.leader_epoch,
                            paused: p.paused,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            epoch: p.epoch,
                            group: p.group.clone(),
                        },
                        p.readonly,
                    ));
                }
            }
            Some(out)
        }) else {
            return;
        };
        let wanted_keys: std::collections::HashSet<Key> =
            wanted.iter().map(|w| w.0.clone()).collect();
        let wanted_created: HashMap<String, i64> =
            wanted.iter().map(|w| (w.0.0.clone(), w.2)).collect();

        // Streams gone, or replaced by a new stream of the same name: stop and delete.
        let stale: Vec<String> = self
            .inner
            .created
            .lock()
            .iter()
            .filter(|(name, created)| wanted_created.get(*name) != Some(*created))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let parts: Vec<Arc<Partition>> = self.edit_partitions(|map| {
                let keys: Vec<Key> = map.keys().filter(|k| k.0 == name).cloned().collect();
                keys.iter().filter_map(|k| map.remove(k)).collect()
            });
            for p in parts {
                p.stop().await;
            }
            self.inner.stats.lock().retain(|k, _| k.0 != name);
            self.inner.created.lock().remove(&name);
            let dir = self.stream_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => info!(self.inner.logger, "deleted stream data"; "stream" => &name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(self.inner.logger, "deleting stream data failed";
                    "stream" => &name, "error" => %e),
            }
        }
        // Partitions no longer held here.
        let dropped: Vec<Arc<Partition>> = self.edit_partitions(|map| {
            let keys: Vec<Key> = map
                .keys()
                .filter(|k| !wanted_keys.contains(*k))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        });
        for p in dropped {
            p.stop().await;
        }

        for (key, subject, created, settings, role, readonly) in wanted {
            let existing = self.partition(&key.0, key.1);
            if let Some(p) = &existing {
                if p.role.same_run(&role) && p.settings == settings {
                    if p.log.is_readonly() != readonly {
                        p.log.set_readonly(readonly);
                        p.stats.lock().readonly.touch(now_nanos());
                    }
                    p.update_isr(&self.inner.ctx, &role.isr, role.epoch).await;
                    continue;
                }
                slog::debug!(self.inner.logger, "restarting partition"; "stream" => &key.0,
                    "partition" => key.1, "was" => ?p.role, "now" => ?role);
                p.stop().await;
                self.edit_partitions(|map| map.remove(&key));
            }
            let stats = self
                .inner
                .stats
                .lock()
                .entry(key.clone())
                .or_default()
                .clone();
            if role.paused && existing.as_ref().is_some_and(|p| !p.role.paused) {
                stats.lock().paused.touch(now_nanos());
            }
            let became_leader = role.leader && existing.as_ref().is_none_or(|p| !p.role.leader);
            if key.0 == CURSORS_STREAM && became_leader {
                self.inner.cursor_cache.lock().clear();
            }
            if self.inner.refused.lock().contains_key(&key) {
                continue;
            }
            let dir = self.stream_dir(&key.0).join(key.1.to_string());
            let spec = Spec {
                stream: &key.0,
                id: key.1,
                stream_subject: &subject,
                settings,
                role,
                readonly,
                stats,
            };
            match Partition::open(spec, dir, &self.inner.ctx).await {
                Ok(p) => {
                    self.edit_partitions(|map| map.insert(key.clone(), p));
                    self.inner.created.lock().insert(key.0.clone(), created);
                }
                // Refused for what this server lacks (the encryption key): said once, and not
                // tried again every second; the rest of the server keeps working.
                Err(BrokerError::FailedPrecondition(why)) => {
                    slog::error!(self.inner.logger, "this server cannot hold a partition";
                        "stream" => &key.0, "partition" => key.1, "why" => &why);
                    self.inner.refused.lock().insert(key.clone(), why);
                }
                Err(e) => warn!(self.inner.logger, "starting a partition failed";
                    "stream" => &key.0, "partition" => key.1, "error" => %e),
            }
        }
    }

    /// On the metadata leader: creates `__cursors` and `__activity` when configured and missing.
    pub(crate) async fn ensure_internal_streams(&self) {
        let cfg = self.inner.cfg.clone();
        let mut wanted = Vec::new();
        if cfg.cursors.partitions > 0 {
            // Internal streams are never encrypted: they hold positions and metadata events,
            // and the broker reads them itself.
            let mut c = internal::StreamConfig {
                compact_enabled: Some(internal::NullableBool { value: true }),
                encryption: Some(internal::NullableBool { value: false }),
                ..Default::default()
            };
            if !cfg.cursors.auto_pause_time.is_zero() {
                c.auto_pause_time = Some(internal::NullableInt64 {
                    value: cfg.cursors.auto_pause_time.as_millis() as i64,
                });
            }
            wanted.push((
                CURSORS_STREAM,
                self.inner.subjects.cursors(),
                cfg.cursors.partitions,
                cfg.cursors.replication_factor,
                c,
            ));
        }
        if cfg.activity.enabled {
            wanted.push((
                ACTIVITY_STREAM,
                self.inner.subjects.activity(),
                1,
                -1,
                internal::StreamConfig {
                    encryption: Some(internal::NullableBool { value: false }),
                    ..Default::default()
                },
            ));
        }
        for (name, subject, partitions, rf, config) in wanted {
            if self.inner.meta.with_state(|f| f.stream(name).is_some()) {
                continue;
            }
            let req = api::CreateStreamRequest {
                subject,
                name: name.into(),
                replication_factor: rf,
                partitions,
                ..Default::default()
            };
            match self.create_stream_entry(&req, config) {
                Ok(entry) => match self.inner.ctx.propose(entry).await {
                    Ok(a) if a.result.is_ok() => {
                        info!(self.inner.logger, "created internal stream"; "stream" => name)
                    }
                    Ok(_) => {}
                    Err(e) => warn!(self.inner.logger, "creating an internal stream failed";
                        "stream" => name, "error" => %e),
                },
                Err(e) => warn!(self.inner.logger, "creating an internal stream failed";
                    "stream" => name, "error" => %e),
            }
        }
    }

    pub(crate) fn record_activity(&self, index: u64, event: &Event) {
        if !self.inner.meta.is_leader() || index <= self.inner.activity_seen.load(Ordering::Acquire)
        {
            return;
        }
        let Some(ev) = crate::activity::event_for(index, event, &self.inner.meta) else {
            return;
        };
        self.inner.activity_seen.store(index, Ordering::Release);
        // One task publishes them all, in order: a task per event left its handle behind
        // forever and could publish events out of order.
        let mut activity = self.inner.activity.lock();
        let tx = activity.get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let b = self.clone();
            let t = tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    crate::activity::publish(b.clone(), ev).await;
                }
            });
            self.inner.tasks.lock().push(t);
            tx
        });
        let _ = tx.send(ev);
    }
}
