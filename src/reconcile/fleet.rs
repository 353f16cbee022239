//! The fleet sync: a few Ironic list calls instead of per-host GETs for an in-sync fleet.
//!
//! Every resync period the reconciler lists all nodes (`fields=`), all volume connectors and
//! all volume targets (`detail=true`), paginated, and joins them to the hosts of its informer
//! cache: by `status.provisioning.ID`, else by metal3's node name `<namespace>~<name>`. Only
//! hosts found out of sync are sent back to the controller's queue, where the ordinary
//! per-host pass (fresh GETs, then writes) repairs them. The decision ([`verdict`]) is pure.
//!
//! What "in sync" means is exactly what [`plan::plan`] says: the listed node, connectors
//! and targets are planned against the [`Desired`] state the last successful per-host pass
//! used ([`Record`]). That record is the only place the CHAP credentials can come from,
//! because Ironic masks `auth_password` and the fleet sync reads no Secret: the plan then
//! compares the digest it would write with the one recorded in the target's `extra`, as a
//! per-host pass does. A host whose spec, status or Secret changed since its record is
//! re-checked by a per-host pass anyway (the watch triggers it); a host without a record
//! (never passed, or its last pass failed) is always re-checked.
//!
//! The listing also tells which nodes carry anything of ours (our marker on the node, a
//! connector or target we made): a host without `bootVolume` whose node carries nothing of
//! ours needs no Ironic call at all ([`FleetState::nothing_of_ours`]).
//!
//! A pass may also plan from the listing instead of reading the node again
//! ([`FleetState::take_current`]): once per node and listing, only while the listing is
//! younger than [`SNAPSHOT_MAX_AGE`], and only when no pass of ours wrote to the node since
//! the listing began. A stale answer costs little: a write Ironic refuses (an object that
//! already exists, a state that changed) fails the pass, and its retry reads the node; a
//! drift the listing missed is found by the next listing.

use super::{
    apply::HostSpec,
    metrics::Metrics,
    plan::{self, Current, Desired, MANAGED_KEY, OUR_EXTRA_PREFIX},
};
use crate::ironic::{self, Connector, IronicClient, Node, Target, list::PAGE_SIZE};
use futures::SinkExt as _;
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::{Map, Value};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a listing may stand in for a pass's own reads.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(120);

/// Everything Ironic holds, indexed for the join.
#[derive(Debug, Default)]
pub struct FleetIndex {
    nodes: Vec<Node>,
    by_uuid: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    connectors: HashMap<String, Vec<Connector>>,
    targets: HashMap<String, Vec<Target>>,
    /// UUIDs and names of nodes carrying anything of ours.
    ours: HashSet<String>,
    /// List requests the snapshot took.
    pub pages: usize,
    /// When its listing began (`None`: built by hand, never stands in for reads).
    pub taken_at: Option<Instant>,
}

/// Drops what neither a plan nor the handshake reads from a listed node (other properties,
/// other clients' `extra`, all of `driver_internal_info` but `boot_from_volume`): a listing
/// is held for every node between syncs. Each non-empty JSON object costs a tree node of
/// about 600 bytes, so an emptied one is replaced by an unallocated map.
fn keep_what_a_pass_reads(node: &mut Node) {
    fn keep(map: &mut Map<String, Value>, wanted: impl Fn(&str) -> bool) {
        map.retain(|k, _| wanted(k));
        if map.is_empty() {
            *map = Map::new();
        }
    }
    keep(&mut node.properties, |k| k == "capabilities");
    keep(&mut node.extra, |k| k.starts_with(OUR_EXTRA_PREFIX));
    keep(&mut node.driver_internal_info, |k| k == "boot_from_volume");
}

fn managed(extra: &Map<String, Value>) -> bool {
    extra.get(MANAGED_KEY).is_some_and(|v| v == &Value::Bool(true))
}

impl FleetIndex {
    /// Indexes one snapshot of nodes, connectors and targets.
    pub fn new(nodes: Vec<Node>, connectors: Vec<Connector>, targets: Vec<Target>) -> Self {
        let mut index = Self::default();
        let mut ours_uuids: HashSet<String> = HashSet::new();
        for c in connectors {
            if managed(&c.extra) {
                ours_uuids.insert(c.node_uuid.clone());
            }
            index.connectors.entry(c.node_uuid.clone()).or_default().push(c);
        }
        for t in targets {
            if managed(&t.extra) {
                ours_uuids.insert(t.node_uuid.clone());
            }
            index.targets.entry(t.node_uuid.clone()).or_default().push(t);
        }
        let mut nodes = nodes;
        nodes.iter_mut().for_each(keep_what_a_pass_reads);
        for (i, n) in nodes.iter().enumerate() {
            index.by_uuid.insert(n.uuid.clone(), i);
            if let Some(name) = &n.name {
                index.by_name.insert(name.clone(), i);
            }
            if managed(&n.extra) || ours_uuids.contains(&n.uuid) {
                index.ours.insert(n.uuid.clone());
                index.ours.extend(n.name.clone());
            }
        }
        index.nodes = nodes;
        index
    }

    /// The host's node: by `status.provisioning.ID` (a UUID, or a name), else by name.
    fn node_of(&self, host: &HostSpec) -> Option<&Node> {
        let by_id = host
            .node_id
            .as_deref()
            .and_then(|id| self.by_uuid.get(id).or_else(|| self.by_name.get(id)));
        by_id
            .or_else(|| self.by_name.get(&host.node_name()))
            .map(|&i| &self.nodes[i])
    }

    /// What Ironic holds for the host's node, as a per-host pass would read it.
    pub fn current(&self, host: &HostSpec) -> Option<Current> {
        let node = self.node_of(host)?.clone();
        Some(Current {
            connectors: self.connectors.get(&node.uuid).cloned().unwrap_or_default(),
            targets: self.targets.get(&node.uuid).cloned().unwrap_or_default(),
            node,
        })
    }

    /// Whether the host's node carries our marker or a connector/target we made.
    fn has_ours(&self, host: &HostSpec) -> bool {
        host.node_id.iter().any(|id| self.ours.contains(id)) || self.ours.contains(&host.node_name())
    }

    /// Nodes in the snapshot.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when Ironic holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// What the last successful per-host pass of a host used.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The host as read then.
    pub host: HostSpec,
    /// Its desired state then (`None`: no `bootVolume`).
    pub desired: Option<Desired>,
    /// `resourceVersion` of the credentials Secret read then.
    pub secret_version: Option<String>,
}

/// The fleet sync's decision for one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do: the node matches (or is not ours and the host wants nothing).
    InSync,
    /// No node in Ironic yet: BMO registers it, and the status change triggers a pass.
    NoNode,
    /// Host deleting or detached: left alone.
    Skipped,
    /// A per-host pass must look: no record of the desired state, or the host changed.
    Unverified,
    /// The plan has work: `n` writes (or waits).
    OutOfSync(usize),
    /// A pass of ours wrote the node and succeeded while this listing was read, so the
    /// listing may show it half-written; that pass's outcome stands, the next listing looks.
    WrittenDuringListing,
}

impl Verdict {
    /// Whether the host goes back to the controller's queue.
    pub fn needs_pass(&self) -> bool {
        matches!(self, Self::Unverified | Self::OutOfSync(_))
    }
}

/// Decides whether `host` needs a per-host pass, from the listing alone.
pub fn verdict(host: &HostSpec, record: Option<&Record>, index: &FleetIndex) -> Verdict {
    if host.skip.is_some() {
        return Verdict::Skipped;
    }
    let current = index.current(host);
    let Some(current) = current else {
        return Verdict::NoNode;
    };
    let desired = match (&host.boot_volume, record) {
        (None, _) => None,
        (Some(_), Some(r)) if r.host == *host && r.desired.is_some() => r.desired.as_ref(),
        (Some(_), _) => return Verdict::Unverified,
    };
    let plan = plan::plan(desired, &current);
    if plan.is_empty() {
        Verdict::InSync
    } else {
        Verdict::OutOfSync(plan.actions.len() + plan.blocked.len())
    }
}

/// What one fleet sync found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// List requests made.
    pub pages: usize,
    /// Nodes listed.
    pub nodes: usize,
    /// Hosts sent to the queue.
    pub out_of_sync: usize,
    /// Hosts looked at.
    pub hosts: usize,
}

/// Shared between the fleet sync and the per-host passes.
#[derive(Debug, Default)]
pub struct FleetState {
    index: RwLock<Option<Arc<FleetIndex>>>,
    records: Mutex<HashMap<String, Arc<Record>>>,
    /// Node UUIDs and names a pass found or made ours since the listing began.
    touched: Mutex<HashMap<String, Instant>>,
    running: AtomicBool,
    /// Nodes whose entry in the current snapshot a pass already planned from.
    consumed: Mutex<HashSet<String>>,
    /// Hosts with a pass started and not (yet) succeeded.
    unsettled: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FleetState {
    /// The latest snapshot, once one was taken.
    pub fn index(&self) -> Option<Arc<FleetIndex>> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a snapshot whose listing began at `started`; marks made by passes after
    /// that are kept, as the listing may not show them.
    pub fn install(&self, index: FleetIndex, started: Instant) {
        lock(&self.touched).retain(|_, at| *at >= started);
        lock(&self.consumed).clear();
        let mut index = index;
        index.taken_at.get_or_insert(started);
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(index));
    }

    /// Whether the periodic sync runs (then in-sync hosts are not requeued one by one).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Marks the periodic sync as running (or stopped).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// True when a pass of `host` (without `bootVolume`) can be answered without Ironic:
    /// a snapshot exists, its node carries nothing of ours, no pass since then made it
    /// ours, and we never configured it from this host.
    pub fn nothing_of_ours(&self, host: &HostSpec) -> bool {
        if host.boot_volume.is_some() {
            return false;
        }
        let Some(index) = self.index() else {
            return false;
        };
        if index.has_ours(host) {
            return false;
        }
        if self.touched_since_listing(host) {
            return false;
        }
        lock(&self.records)
            .get(&key(host))
            .is_none_or(|r| r.desired.is_none())
    }

    /// What the latest listing says about `host`'s node, when a pass may plan from it
    /// instead of reading the node: a listing younger than [`SNAPSHOT_MAX_AGE`], the node's
    /// entry not used yet, and no write of ours to the node since the listing began.
    pub fn take_current(&self, host: &HostSpec) -> Option<Current> {
        let index = self.index()?;
        if index.taken_at?.elapsed() > SNAPSHOT_MAX_AGE {
            return None;
        }
        let current = index.current(host)?;
        let uuid = &current.node.uuid;
        let touched = lock(&self.touched);
        if touched.contains_key(uuid)
            || current
                .node
                .name
                .as_ref()
                .is_some_and(|n| touched.contains_key(n))
        {
            return None;
        }
        drop(touched);
        lock(&self.consumed).insert(uuid.clone()).then_some(current)
    }

    /// Forgets the record of `host` (a pass starts; only a success records again).
    pub fn forget(&self, host: &HostSpec) {
        let key = key(host);
        lock(&self.records).remove(&key);
        lock(&self.unsettled).insert(key);
    }

    /// Records a successful pass; `node_uuid` is the node it reached (empty: none).
    pub fn remember(&self, record: Record, node_uuid: &str, wrote: bool) {
        if !node_uuid.is_empty() && (record.desired.is_some() || wrote) {
            let now = Instant::now();
            let mut touched = lock(&self.touched);
            touched.insert(node_uuid.to_owned(), now);
            touched.insert(record.host.node_name(), now);
            if let Some(id) = &record.host.node_id {
                touched.insert(id.clone(), now);
            }
        }
        let key = key(&record.host);
        lock(&self.unsettled).remove(&key);
        lock(&self.records).insert(key, Arc::new(record));
    }

    /// The record of `host`, if its last pass succeeded.
    pub fn record(&self, host: &HostSpec) -> Option<Arc<Record>> {
        lock(&self.records).get(&key(host)).cloned()
    }

    /// Whether a Secret event at `version` is news for `host`: its last successful pass read
    /// another version, or a pass started and has not succeeded (it may have read an older
    /// one, or failed for want of this Secret). A host no pass started yet is queued anyway
    /// and reads the Secret then. Startup lists every Secret: this keeps that from running
    /// every host twice.
    pub fn secret_changed(&self, host: &HostSpec, version: Option<&str>) -> bool {
        match (self.record(host), version) {
            (Some(r), Some(v)) => r.secret_version.as_deref() != Some(v),
            (Some(_), None) => true,
            (None, _) => lock(&self.unsettled).contains(&key(host)),
        }
    }

    /// The current snapshot's [`verdict`] on `host` (`None` before the first snapshot).
    ///
    /// A node a successful pass wrote since the listing began is not judged from it: its
    /// node page may predate the write and its target page follow it (a host configured in
    /// that window used to look out of sync and cost a pass of three reads).
    pub fn verdict(&self, host: &HostSpec) -> Option<Verdict> {
        let index = self.index()?;
        let record = self.record(host);
        if record.is_some() && self.touched_since_listing(host) {
            return Some(Verdict::WrittenDuringListing);
        }
        Some(verdict(host, record.as_deref(), &index))
    }

    /// A successful pass of `host` wrote its node after the current listing began.
    fn touched_since_listing(&self, host: &HostSpec) -> bool {
        let touched = lock(&self.touched);
        host.node_id.iter().any(|id| touched.contains_key(id)) || touched.contains_key(&host.node_name())
    }
}

fn key(host: &HostSpec) -> String {
    format!("{}/{}", host.namespace, host.name)
}

/// Lists the whole fleet and installs the snapshot; returns the pages read and nodes seen.
///
/// With `hosts` (the informer cache's), node pages stop once every host's node has been
/// seen: nodes no host names cannot change a verdict. Connectors and targets are always read
/// in full (a host may have none, so there is nothing to wait for).
pub async fn refresh(
    client: &IronicClient,
    state: &FleetState,
    hosts: &[HostSpec],
) -> Result<(usize, usize), ironic::Error> {
    let started = Instant::now();
    let mut unseen = Unseen::new(hosts);
    let nodes = client
        .list_nodes_until(PAGE_SIZE, |page| unseen.saw(page))
        .await?;
    let connectors = client.list_all_connectors(PAGE_SIZE).await?;
    let targets = client.list_all_targets(PAGE_SIZE).await?;
    let pages = nodes.pages + connectors.pages + targets.pages;
    let mut index = FleetIndex::new(nodes.items, connectors.items, targets.items);
    index.pages = pages;
    index.taken_at = Some(started);
    let count = index.len();
    state.install(index, started);
    Ok((pages, count))
}

/// The hosts whose node a listing has not shown yet, by node ID and by node name.
struct Unseen {
    /// Node ident (ID or `<namespace>~<name>`) -> host index.
    idents: HashMap<String, usize>,
    found: Vec<bool>,
    left: usize,
}

impl Unseen {
    fn new(hosts: &[HostSpec]) -> Self {
        let mut idents = HashMap::with_capacity(hosts.len() * 2);
        for (i, host) in hosts.iter().enumerate() {
            idents.insert(host.node_name(), i);
            if let Some(id) = &host.node_id {
                idents.insert(id.clone(), i);
            }
        }
        Self {
            idents,
            found: vec![false; hosts.len()],
            left: hosts.len(),
        }
    }

    /// Marks the hosts whose node is in `page`; true once none is left (never without hosts).
    fn saw(&mut self, page: &[Node]) -> bool {
        if self.found.is_empty() {
            return false;
        }
        for node in page {
            for ident in std::iter::once(&node.uuid).chain(node.name.as_ref()) {
                if let Some(&i) = self.idents.get(ident)
                    && !std::mem::replace(&mut self.found[i], true)
                {
                    self.left -= 1;
                }
            }
        }
        self.left == 0
    }
}

/// Where a sync sends the hosts it finds out of sync: the controller's `reconcile_on`.
pub type Trigger = futures::channel::mpsc::Sender<ObjectRef<DynamicObject>>;

/// One fleet sync: list, install the snapshot, send the out-of-sync hosts of `store`.
pub async fn sync_once(
    client: &IronicClient,
    state: &FleetState,
    store: &Store<DynamicObject>,
    resource: &ApiResource,
    trigger: &mut Trigger,
) -> Result<SyncReport, ironic::Error> {
    let (specs, objs): (Vec<HostSpec>, Vec<_>) = store
        .state()
        .into_iter()
        .filter_map(|obj| {
            let raw = serde_json::to_value(obj.as_ref()).ok()?;
            Some((HostSpec::from_value(&raw).ok()?, obj))
        })
        .unzip();
    let (pages, nodes) = refresh(client, state, &specs).await?;
    let mut report = SyncReport {
        pages,
        nodes,
        ..Default::default()
    };
    for (host, obj) in specs.iter().zip(objs) {
        report.hosts += 1;
        if !state.verdict(host).is_some_and(|v| v.needs_pass()) {
            continue;
        }
        report.out_of_sync += 1;
        tracing::debug!(host = %key(host), "fleet sync: out of sync");
        // The controller gone (shutdown) is not an error of the sync.
        if trigger
            .send(ObjectRef::from_obj_with(obj.as_ref(), resource.clone()))
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(report)
}

/// Runs [`sync_once`] every `interval` (the first after one interval: the caller takes the
/// first snapshot before the controller starts). Runs until the future is dropped.
pub async fn run(
    client: IronicClient,
    state: Arc<FleetState>,
    metrics: Arc<Metrics>,
    store: Store<DynamicObject>,
    resource: ApiResource,
    interval: Duration,
    mut trigger: Trigger,
) {
    state.set_running(true);
    loop {
        tokio::time::sleep(interval).await;
        let start = Instant::now();
        match sync_once(&client, &state, &store, &resource, &mut trigger).await {
            Ok(r) => {
                metrics.record_fleet_sync(Some((r.pages, r.out_of_sync)));
                tracing::info!(
                    pages = r.pages,
                    nodes = r.nodes,
                    hosts = r.hosts,
                    out_of_sync = r.out_of_sync,
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "fleet sync"
                );
            }
            Err(e) => {
                metrics.record_fleet_sync(None);
                tracing::warn!(error = %e, "fleet sync failed; next try in one interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::{CREDENTIALS_KEY, Credentials};
    use serde_json::json;

    const UUID: &str = "11111111-2222-3333-4444-555555555555";

    fn host(bv: bool, id: Option<&str>) -> HostSpec {
        let mut v = json!({"metadata": {"name": "h", "namespace": "ns"}, "spec": {}});
        if bv {
            v["spec"]["bootVolume"] = json!({"volumeId": "vol-1", "volumeDriver": "external",
                "connectorId": "iqn.2004-10.com.example:h",
                "iscsiTarget": {"iqn": "iqn.2010-10.com.example:v", "portal": "192.0.2.1"},
                "iscsiCredentialsName": "chap"});
        }
        if let Some(id) = id {
            v["status"] = json!({"provisioning": {"ID": id}});
        }
        HostSpec::from_value(&v).unwrap()
    }

    fn creds(pw: &str) -> Credentials {
        Credentials {
            username: "u".into(),
            password: crate::api::Sensitive::new(pw),
        }
    }

    fn desired(h: &HostSpec, pw: &str) -> Desired {
        Desired::from_boot_volume(h.boot_volume.as_ref().unwrap(), Some(creds(pw))).unwrap()
    }

    fn record(h: &HostSpec, pw: &str) -> Record {
        Record {
            host: h.clone(),
            desired: Some(desired(h, pw)),
            secret_version: Some("1".into()),
        }
    }

    fn plain_node(name: &str, extra: Value) -> Node {
        Node {
            uuid: UUID.into(),
            name: Some(name.into()),
            power_state: Some("power off".into()),
            provision_state: Some("manageable".into()),
            storage_interface: Some("noop".into()),
            extra: serde_json::from_value(extra).unwrap(),
            ..Default::default()
        }
    }

    /// Applies `h`'s plan to an empty node the way Ironic would: the in-sync snapshot.
    fn converged(h: &HostSpec, pw: &str) -> FleetIndex {
        let d = desired(h, pw);
        let mut current = Current {
            node: plain_node("ns~h", json!({})),
            ..Default::default()
        };
        for action in plan::plan(Some(&d), &current).actions {
            match action {
                plan::Action::PatchNode { .. } => {
                    current.node.storage_interface = Some("external".into());
                    current
                        .node
                        .properties
                        .insert("capabilities".into(), json!("iscsi_boot:True"));
                    current.node.extra.insert(MANAGED_KEY.into(), json!(true));
                }
                plan::Action::CreateConnector(c) => current.connectors.push(Connector {
                    uuid: "c1".into(),
                    node_uuid: c.node_uuid,
                    kind: c.kind,
                    connector_id: c.connector_id,
                    extra: c.extra,
                    updated_at: None,
                }),
                plan::Action::CreateTarget(t) => {
                    let mut properties = t.properties;
                    properties.insert("auth_password".into(), json!("******"));
                    current.targets.push(Target {
                        uuid: "t1".into(),
                        node_uuid: t.node_uuid,
                        volume_type: t.volume_type,
                        boot_index: t.boot_index,
                        volume_id: t.volume_id,
                        properties,
                        extra: t.extra,
                        updated_at: None,
                    })
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert!(plan::plan(Some(&d), &current).is_empty(), "simulation converged");
        FleetIndex::new(vec![current.node], current.connectors, current.targets)
    }

    #[test]
    fn node_pages_stop_once_every_host_is_seen() {
        let node = |uuid: &str, name: &str| Node {
            uuid: uuid.into(),
            name: Some(name.into()),
            ..Default::default()
        };
        let by_name = host(false, None);
        let mut by_id = host(true, Some(UUID));
        by_id.name = "other".into();
        let mut unseen = Unseen::new(&[by_name.clone(), by_id]);
        assert!(
            !unseen.saw(&[node("x", "ns~foreign"), node("y", "ns~h")]),
            "by ID still unseen"
        );
        // Seeing the same host again does not count twice.
        assert!(!unseen.saw(&[node("y", "ns~h")]));
        assert!(unseen.saw(&[node(UUID, "renamed")]), "found by ID, not by name");
        // Without hosts (the first snapshot, before the cache is filled) every page is read.
        assert!(!Unseen::new(&[]).saw(&[node("x", "ns~h")]));
        // A host whose node is missing keeps the listing going to the end.
        let mut one = Unseen::new(&[by_name]);
        assert!(!one.saw(&[node("x", "ns~foreign")]));
    }

    /// A listing keeps of each node only what a pass reads; every `extra` key of ours
    /// carries the prefix that decides what is kept.
    #[test]
    fn a_listing_keeps_only_what_a_pass_reads() {
        use crate::reconcile::handshake::{BOOT_DEVICE_KEY, STALE_KEY};
        for key in [MANAGED_KEY, CREDENTIALS_KEY, BOOT_DEVICE_KEY, STALE_KEY] {
            assert!(key.starts_with(OUR_EXTRA_PREFIX), "{key}");
        }
        let bv = host(true, None);
        let mut node = plain_node(
            "ns~h",
            json!({MANAGED_KEY: true, BOOT_DEVICE_KEY: "pxe", "other": 1}),
        );
        node.properties =
            serde_json::from_value(json!({"capabilities": "iscsi_boot:True", "cpu_arch": "x86_64"})).unwrap();
        node.driver_internal_info =
            serde_json::from_value(json!({"boot_from_volume": "t-1", "last_power_state_change": "x"}))
                .unwrap();
        let mut bare = plain_node("ns~bare", json!({"other": 1}));
        bare.uuid = "other-uuid".into();
        bare.driver_internal_info = serde_json::from_value(json!({"agent_url": "x"})).unwrap();
        let index = FleetIndex::new(vec![node, bare], vec![], vec![]);
        let kept = index.current(&bv).unwrap().node;
        assert_eq!(
            Value::Object(kept.extra.clone()),
            json!({MANAGED_KEY: true, BOOT_DEVICE_KEY: "pxe"})
        );
        assert_eq!(
            Value::Object(kept.properties.clone()),
            json!({"capabilities": "iscsi_boot:True"})
        );
        assert_eq!(kept.boot_from_volume(), Some("t-1"));
        assert_eq!(kept.driver_internal_info.len(), 1);
        let bare = &index.nodes[index.by_uuid["other-uuid"]];
        assert!(bare.extra.is_empty() && bare.driver_internal_info.is_empty() && bare.properties.is_empty());
    }

    #[test]
    fn verdict_table() {
        let bv = host(true, None);
        let bv_by_id = host(true, Some(UUID));
        let plain = host(false, None);
        let in_sync = converged(&bv, "pw");
        let mut no_target = converged(&bv, "pw");
        no_target.targets.clear();
        let mut foreign_target = converged(&bv, "pw");
        foreign_target
            .targets
            .values_mut()
            .flatten()
            .for_each(|t| t.extra.clear());
        let empty = FleetIndex::default();
        let foreign = FleetIndex::new(vec![plain_node("ns~h", json!({"other": 1}))], vec![], vec![]);
        let deleting = HostSpec {
            skip: Some("being deleted"),
            ..bv.clone()
        };
        let mut changed = bv.clone();
        changed.boot_volume.as_mut().unwrap().volume_id = Some("vol-2".into());
        let cases: Vec<(&str, &HostSpec, Option<Record>, &FleetIndex, Verdict)> = vec![
            ("in sync", &bv, Some(record(&bv, "pw")), &in_sync, Verdict::InSync),
            (
                "joined by ID",
                &bv_by_id,
                Some(record(&bv_by_id, "pw")),
                &in_sync,
                Verdict::InSync,
            ),
            (
                "target deleted",
                &bv,
                Some(record(&bv, "pw")),
                &no_target,
                Verdict::OutOfSync(1),
            ),
            (
                "password rotated",
                &bv,
                Some(record(&bv, "new")),
                &in_sync,
                Verdict::OutOfSync(1),
            ),
            ("no record", &bv, None, &in_sync, Verdict::Unverified),
            (
                "host changed",
                &changed,
                Some(record(&bv, "pw")),
                &in_sync,
                Verdict::Unverified,
            ),
            ("no node", &bv, Some(record(&bv, "pw")), &empty, Verdict::NoNode),
            ("deleting", &deleting, None, &in_sync, Verdict::Skipped),
            ("not ours, no bootVolume", &plain, None, &foreign, Verdict::InSync),
            (
                "ours, bootVolume removed (delete connector and target, storage interface, extra)",
                &plain,
                None,
                &in_sync,
                Verdict::OutOfSync(4),
            ),
            (
                "only a foreign target left",
                &plain,
                None,
                &foreign_target,
                Verdict::OutOfSync(3),
            ),
        ];
        for (name, h, r, index, want) in cases {
            assert_eq!(verdict(h, r.as_ref(), index), want, "{name}");
        }
    }

    #[test]
    fn the_index_knows_which_nodes_carry_anything_of_ours() {
        let bv = host(true, None);
        let ours = converged(&bv, "pw");
        let plain = host(false, None);
        assert!(ours.has_ours(&plain));
        let by_target_only = FleetIndex::new(
            vec![plain_node("ns~h", json!({}))],
            vec![],
            ours.targets.values().flatten().cloned().collect(),
        );
        assert!(by_target_only.has_ours(&host(false, Some(UUID))));
        let foreign = FleetIndex::new(vec![plain_node("ns~h", json!({}))], vec![], vec![]);
        assert!(!foreign.has_ours(&plain));
    }

    #[test]
    fn no_call_only_when_the_snapshot_and_our_own_passes_say_so() {
        let plain = host(false, Some(UUID));
        let state = FleetState::default();
        assert!(!state.nothing_of_ours(&plain), "no snapshot yet");
        let t0 = Instant::now();
        state.install(
            FleetIndex::new(vec![plain_node("ns~h", json!({}))], vec![], vec![]),
            t0,
        );
        assert!(state.nothing_of_ours(&plain));
        assert!(
            !state.nothing_of_ours(&host(true, Some(UUID))),
            "bootVolume always looks"
        );

        // A pass configured the node after the listing began: not answered from the snapshot.
        let bv = host(true, Some(UUID));
        state.remember(record(&bv, "pw"), UUID, true);
        assert!(!state.nothing_of_ours(&plain));
        // A newer snapshot that shows the marker takes over; the record still says ours.
        state.install(converged(&bv, "pw"), Instant::now());
        assert!(!state.nothing_of_ours(&plain));
        state.forget(&bv);
        assert!(!state.nothing_of_ours(&plain), "the listing shows our marker");
        state.install(
            FleetIndex::new(vec![plain_node("ns~h", json!({}))], vec![], vec![]),
            Instant::now(),
        );
        assert!(
            state.nothing_of_ours(&plain),
            "marker gone, touch older than the listing"
        );
    }

    #[test]
    fn a_listing_stands_in_for_reads_once_while_fresh_and_untouched() {
        let bv = host(true, Some(UUID));
        let state = FleetState::default();
        assert_eq!(state.take_current(&bv), None, "no listing");
        state.install(converged(&bv, "pw"), Instant::now());
        let current = state.take_current(&bv).expect("fresh listing");
        assert_eq!((current.connectors.len(), current.targets.len()), (1, 1));
        assert_eq!(state.take_current(&bv), None, "once per listing");
        state.install(converged(&bv, "pw"), Instant::now());
        state.remember(record(&bv, "pw"), UUID, true);
        assert_eq!(state.take_current(&bv), None, "written since the listing began");
        let old = Instant::now().checked_sub(SNAPSHOT_MAX_AGE + Duration::from_secs(1));
        if let Some(old) = old {
            state.install(converged(&bv, "pw"), old);
            assert_eq!(state.take_current(&bv), None, "too old");
        }
        assert_eq!(
            state.take_current(&host(true, Some("other"))),
            None,
            "no such node"
        );
    }

    #[test]
    fn secret_events_matter_only_when_the_version_is_new() {
        let bv = host(true, None);
        let state = FleetState::default();
        assert!(
            !state.secret_changed(&bv, Some("1")),
            "no pass yet: it is queued anyway"
        );
        state.forget(&bv);
        assert!(
            state.secret_changed(&bv, Some("1")),
            "a pass started or failed: look"
        );
        state.remember(record(&bv, "pw"), UUID, false);
        assert!(!state.secret_changed(&bv, Some("1")));
        assert!(state.secret_changed(&bv, Some("2")));
        assert!(state.secret_changed(&bv, None));
    }

    #[test]
    fn the_state_judges_with_the_latest_snapshot_and_record() {
        let bv = host(true, None);
        let state = FleetState::default();
        assert_eq!(state.verdict(&bv), None, "no snapshot: nothing decided");
        let no_target = || {
            let mut index = converged(&bv, "pw");
            index.targets.clear();
            index
        };
        state.remember(record(&bv, "pw"), UUID, false);
        state.install(no_target(), Instant::now());
        assert_eq!(state.verdict(&bv), Some(Verdict::OutOfSync(1)));
        // The same listing, but the pass succeeded while it was read: not judged from it.
        state.install(no_target(), Instant::now());
        state.remember(record(&bv, "pw"), UUID, true);
        assert_eq!(state.verdict(&bv), Some(Verdict::WrittenDuringListing));
        assert!(!Verdict::WrittenDuringListing.needs_pass());
        let mut fine = converged(&bv, "pw");
        fine.targets.values_mut().flatten().for_each(|t| {
            assert!(t.extra.contains_key(CREDENTIALS_KEY));
        });
        fine.pages = 3;
        state.install(fine, Instant::now());
        assert_eq!(state.verdict(&bv), Some(Verdict::InSync));
    }
}
