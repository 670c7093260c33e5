//! Read-only requests: lock reads, history, custom status, KV, stats and
//! commit status.

use super::ModelState;
use crate::request::{Request, Response};
use duropg_core::codec::StoredEvent;
use duropg_core::instance::INITIAL_EXECUTION_ID;
use duropg_core::turn::LockRead;
use duropg_core::StoreFault;
use duropg_engine::store::{CommitStatus, RawStats};
use std::collections::BTreeMap;

impl ModelState {
    /// Execute a read.
    pub(crate) fn read(&self, request: &Request, now_ms: u64) -> Result<Response, StoreFault> {
        Ok(match request {
            Request::ReadInstanceLock(token) => Response::Lock(self.lock_of(token).map(|(i, l)| LockRead {
                instance: i.clone(),
                locked_until_ms: l.locked_until_ms,
                now_ms,
            })),
            Request::ReadHistory(instance, Some(exec)) => Response::History(*exec, self.events(instance, *exec)),
            Request::ReadHistory(instance, None) => {
                let (exec, events) = self.latest_history(instance);
                Response::History(exec.unwrap_or(INITIAL_EXECUTION_ID), events)
            }
            Request::CustomStatus(instance, last_seen) => Response::Custom(
                self.instances
                    .get(instance)
                    .filter(|r| r.custom_status_version > *last_seen)
                    .map(|r| (r.custom_status.clone(), r.custom_status_version)),
            ),
            Request::KvValue(instance, key) => {
                let k = (instance.clone(), key.clone());
                Response::Value(match self.kv_delta.get(&k) {
                    Some((value, _)) => value.clone(),
                    None => self.kv_store.get(&k).map(|(v, _)| v.clone()),
                })
            }
            Request::KvAll(instance) => Response::Pairs(self.kv_merged(instance).into_iter().collect()),
            Request::InstanceStats(instance) => Response::Stats(self.stats(instance)),
            Request::TokenSettled(token) => Response::Count(u64::from(self.settled.contains(token))),
            Request::CommitStatus(xid) => {
                Response::Commit(self.xids.get(xid).copied().unwrap_or(CommitStatus::Unknown))
            }
            other => {
                return Err(StoreFault::Client {
                    detail: format!("{} is not a read", other.op()),
                })
            }
        })
    }

    /// Live KV values: the store overlaid with the delta, tombstones removed.
    fn kv_merged(&self, instance: &str) -> BTreeMap<String, String> {
        let mut merged: BTreeMap<String, Option<String>> = self
            .kv_store
            .iter()
            .filter(|((i, _), _)| i == instance)
            .map(|((_, k), (v, _))| (k.clone(), Some(v.clone())))
            .collect();
        for ((i, k), (v, _)) in &self.kv_delta {
            if i == instance {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }

    /// `instance_stats`: counts and sizes of the current execution.
    fn stats(&self, instance: &str) -> Option<RawStats> {
        let row = self.instances.get(instance)?;
        let events = self.history.get(&(instance.to_string(), row.current_execution_id));
        let kv = self.kv_merged(instance);
        Some(RawStats {
            history_event_count: events.map_or(0, |e| e.len() as u64),
            history_size_bytes: events.map_or(0, |e| e.values().map(|h| h.data.len() as u64).sum()),
            first_event: events.and_then(|e| e.values().next()).map(|h| StoredEvent {
                event_id: 1,
                data: h.data.clone(),
            }),
            kv_key_count: kv.len() as u64,
            kv_value_bytes: kv.values().map(|v| v.len() as u64).sum(),
        })
    }
}
