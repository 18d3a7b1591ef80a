//! Objects and their history, with the semantics clients rely on: one global resourceVersion
//! counter, uid / creationTimestamp / generation, 409 on stale writes, the status subresource
//! split, finalizers and deletionTimestamp, owner-reference garbage collection, namespace
//! deletion, and a bounded history that watches resume from (410 Gone past it). No HTTP here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::api_error::ApiError;
use crate::resources::{ResourceId, ResourceInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub revision: u64,
    pub resource: ResourceId,
    pub kind: EventType,
    pub object: Value,
    /// For `Modified`: the object before the change, so that a filtered watch can tell an
    /// object entering or leaving its selection (sent as ADDED / DELETED, as kube-apiserver does).
    pub previous: Option<Value>,
    /// `object` as JSON, encoded once for however many watches send it.
    encoded: std::sync::OnceLock<String>,
}

impl WatchEvent {
    fn new(
        revision: u64,
        resource: &ResourceId,
        kind: EventType,
        object: Value,
        previous: Option<Value>,
    ) -> Self {
        WatchEvent {
            revision,
            resource: resource.clone(),
            kind,
            object,
            previous,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The object as JSON text.
    pub fn encoded_object(&self) -> &str {
        self.encoded.get_or_init(|| self.object.to_string())
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Everything but `status` (when the resource has a status subresource).
    Main,
    /// Only `status`.
    Status,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// A watch's start: the events to send first, then the live stream.
pub struct WatchStart {
    pub backlog: Vec<Arc<WatchEvent>>,
    pub live: broadcast::Receiver<Arc<WatchEvent>>,
    pub revision: u64,
}

type Key = (String, String);

struct State {
    revision: u64,
    objects: BTreeMap<ResourceId, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    history_limit: usize,
    /// Events up to this revision are gone from the history: older watches get 410.
    compacted_through: u64,
}

impl State {
    fn object(&self, info: &ResourceInfo, key: &Key, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&info.id)
            .and_then(|c| c.get(key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.id, name))
    }

    /// Every stored object that passes `keep`, with where it is stored.
    fn select(
        &self,
        keep: impl Fn(&ResourceId, &Key, &Value) -> bool,
    ) -> Vec<(ResourceId, Key, Value)> {
        self.objects
            .iter()
            .flat_map(|(resource, collection)| {
                collection
                    .iter()
                    .map(move |(key, object)| (resource, key, object))
            })
            .filter(|(resource, key, object)| keep(resource, key, object))
            .map(|(resource, key, object)| (resource.clone(), key.clone(), object.clone()))
            .collect()
    }
}

pub struct Store {
    state: Mutex<State>,
    live: broadcast::Sender<Arc<WatchEvent>>,
}

const FOREGROUND: &str = "foregroundDeletion";
const NAMESPACES: (&str, &str) = ("", "namespaces");

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn metadata(object: &Value) -> &Value {
    &object["metadata"]
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    metadata(object)[field].as_str()
}

fn finalizers(object: &Value) -> Vec<String> {
    metadata(object)["finalizers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set_meta(object: &mut Value, field: &str, value: Value) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"][field] = value;
}

fn remove_meta(object: &mut Value, field: &str) {
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove(field);
    }
}

/// The object minus metadata and status: what `generation` counts changes of.
fn spec_part(object: &Value) -> Map<String, Value> {
    let mut rest = object.as_object().cloned().unwrap_or_default();
    for field in ["metadata", "status", "apiVersion", "kind"] {
        rest.remove(field);
    }
    rest
}

fn without_resource_version(object: &Value) -> Value {
    let mut copy = object.clone();
    remove_meta(&mut copy, "resourceVersion");
    remove_meta(&mut copy, "managedFields");
    copy
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (live, _) = broadcast::channel(1 << 16);
        let store = Store {
            state: Mutex::new(State {
                revision: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit,
                compacted_through: 0,
            }),
            live,
        };
        let namespaces = crate::resources::builtins()
            .into_iter()
            .find(|r| r.id == ResourceId::new(NAMESPACES.0, NAMESPACES.1));
        let namespaces = namespaces.expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public"] {
            store
                .create(&namespaces, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}}), false)
                .expect("fresh store");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Records a change: new revision, stored object, history, live watchers.
    fn commit(
        &self,
        state: &mut State,
        resource: &ResourceId,
        key: Key,
        kind: EventType,
        mut object: Value,
    ) -> Value {
        state.revision += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            json!(state.revision.to_string()),
        );
        let collection = state.objects.entry(resource.clone()).or_default();
        let previous = if kind == EventType::Deleted {
            collection.remove(&key);
            None
        } else {
            collection.insert(key.clone(), object.clone())
        };
        let event = Arc::new(WatchEvent::new(
            state.revision,
            resource,
            kind,
            object.clone(),
            previous.filter(|_| kind == EventType::Modified),
        ));
        state.history.push_back(event.clone());
        while state.history.len() > state.history_limit {
            let dropped = state.history.pop_front().expect("non-empty history");
            state.compacted_through = dropped.revision;
        }
        let _ = self.live.send(event);
        if resource.group == "events.k8s.io" && resource.plural == "events" {
            // kube-apiserver serves one Event through both APIs: events.k8s.io writes (what
            // kube-runtime's Recorder sends) show up as core Events for `kubectl describe`.
            let core = ResourceId::new("", "events");
            let kind = match kind {
                EventType::Deleted => EventType::Deleted,
                _ if state
                    .objects
                    .get(&core)
                    .is_some_and(|c| c.contains_key(&key)) =>
                {
                    EventType::Modified
                }
                _ => EventType::Added,
            };
            self.commit(state, &core, key, kind, core_event(&object));
        }
        object
    }

    fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Key {
        (
            if info.namespaced {
                namespace.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    pub fn create(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let mut state = self.lock();
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let name = match (
            meta_str(&object, "name").filter(|n| !n.is_empty()),
            meta_str(&object, "generateName"),
        ) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
            (None, None) => {
                return Err(ApiError::invalid(
                    &info.kind,
                    &info.id,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        set_meta(&mut object, "name", json!(name));
        if info.namespaced {
            let namespace = namespace.ok_or_else(|| {
                ApiError::bad_request("a namespaced resource is created in a namespace")
            })?;
            if let Some(given) = meta_str(&object, "namespace")
                && given != namespace
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let namespaces = ResourceId::new(NAMESPACES.0, NAMESPACES.1);
            let found = state
                .objects
                .get(&namespaces)
                .and_then(|c| c.get(&(String::new(), namespace.to_string())));
            match found {
                None => return Err(ApiError::not_found(&namespaces, namespace)),
                Some(ns) if meta_str(ns, "deletionTimestamp").is_some() => {
                    let mut error = ApiError::bad_request(format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    ));
                    error.code = 403;
                    error.reason = "Forbidden";
                    return Err(error);
                }
                Some(_) => {}
            }
            set_meta(&mut object, "namespace", json!(namespace));
        } else {
            remove_meta(&mut object, "namespace");
        }
        let key = Self::key(info, namespace, &name);
        if state
            .objects
            .get(&info.id)
            .is_some_and(|c| c.contains_key(&key))
        {
            return Err(ApiError::already_exists(&info.id, &name));
        }
        object["apiVersion"] = json!(info.api_version());
        object["kind"] = json!(info.kind);
        set_meta(&mut object, "uid", json!(uuid::Uuid::new_v4().to_string()));
        set_meta(&mut object, "creationTimestamp", json!(now()));
        set_meta(&mut object, "generation", json!(1));
        if info.id == ResourceId::new(NAMESPACES.0, NAMESPACES.1) {
            object["status"] = json!({"phase": "Active"});
        }
        let mut object = Self::admit(info, &name, object, None)?;
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            remove_meta(&mut object, field);
        }
        if dry_run {
            return Ok(object);
        }
        Ok(self.commit(&mut state, &info.id, key, EventType::Added, object))
    }

    pub fn get(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let state = self.lock();
        state
            .objects
            .get(&info.id)
            .and_then(|c| c.get(&Self::key(info, namespace, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.id, name))
    }

    /// Objects of `info` (in `namespace`, or all) that pass `keep`, in name order, from after
    /// `start_after` (a continue key), at most `limit`; with the revision they were read at and
    /// the continue key of the next page.
    pub fn list(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        keep: &dyn Fn(&Value) -> bool,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> (Vec<Value>, u64, Option<String>) {
        let state = self.lock();
        let mut items = Vec::new();
        let mut next = None;
        if let Some(collection) = state.objects.get(&info.id) {
            for ((ns, name), object) in collection {
                if info.namespaced && namespace.is_some_and(|wanted| wanted != ns) {
                    continue;
                }
                let continue_key = format!("{ns}/{name}");
                if start_after.is_some_and(|after| continue_key.as_str() <= after) || !keep(object)
                {
                    continue;
                }
                if limit.is_some_and(|limit| items.len() == limit) {
                    next = items.last().map(|last: &Value| {
                        format!(
                            "{}/{}",
                            meta_str(last, "namespace").unwrap_or_default(),
                            meta_str(last, "name").unwrap_or_default()
                        )
                    });
                    break;
                }
                items.push(object.clone());
            }
        }
        (items, state.revision, next)
    }

    /// Replaces an object (or its status). A stale `metadata.resourceVersion` gets 409.
    pub fn update(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        object: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.modify(info, namespace, name, target, dry_run, |_| Ok(object))
    }

    /// Read-modify-write under the store's lock: `change` gets the current object and returns
    /// the wanted one (patches use this). The result is checked and applied as an update.
    pub fn modify(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        target: Target,
        dry_run: bool,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let key = Self::key(info, namespace, name);
        let current = state.object(info, &key, name)?;
        let wanted = change(&current)?;
        if !wanted.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(version) = meta_str(&wanted, "resourceVersion").filter(|v| !v.is_empty())
            && Some(version) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::conflict(&info.id, name));
        }
        if meta_str(&wanted, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&wanted, "name").unwrap_or_default()
            )));
        }
        let next = Self::merge_write(info, &current, wanted, target);
        let next = Self::admit(info, name, next, Some(&current))?;
        if without_resource_version(&next) == without_resource_version(&current) {
            return Ok(current);
        }
        if dry_run {
            return Ok(next);
        }
        Ok(self.settle(&mut state, &info.id, key, next))
    }

    /// Schema defaults, pruning and validation for resources defined by a CRD.
    fn admit(
        info: &ResourceInfo,
        name: &str,
        object: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        match &info.schema {
            None => Ok(object),
            Some(schema) => crate::schema::admit(schema, object, old)
                .map_err(|causes| ApiError::invalid(&info.kind, &info.id, name, &causes)),
        }
    }

    /// The object a write leaves: the written part from `wanted`, the rest from `current`,
    /// and system metadata kept.
    fn merge_write(info: &ResourceInfo, current: &Value, wanted: Value, target: Target) -> Value {
        let mut next = match target {
            Target::Status => {
                let mut next = current.clone();
                // Field ownership of the status write is recorded too.
                match metadata(&wanted).get("managedFields") {
                    Some(managed) => set_meta(&mut next, "managedFields", managed.clone()),
                    None => remove_meta(&mut next, "managedFields"),
                }
                next["status"] = wanted.get("status").cloned().unwrap_or(Value::Null);
                if next["status"].is_null() {
                    next.as_object_mut().expect("object").remove("status");
                }
                next
            }
            Target::Main => {
                let mut next = wanted;
                if info.has_status {
                    match current.get("status") {
                        Some(status) => next["status"] = status.clone(),
                        None => {
                            next.as_object_mut().expect("object").remove("status");
                        }
                    }
                }
                next
            }
        };
        next["apiVersion"] = current["apiVersion"].clone();
        next["kind"] = current["kind"].clone();
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            match metadata(current).get(field) {
                Some(value) => set_meta(&mut next, field, value.clone()),
                None => remove_meta(&mut next, field),
            }
        }
        let generation = metadata(current)["generation"].as_i64().unwrap_or(1);
        let bumped = if target == Target::Main && spec_part(&next) != spec_part(current) {
            generation + 1
        } else {
            generation
        };
        set_meta(&mut next, "generation", json!(bumped));
        next
    }

    /// Stores `next`; an object being deleted whose last finalizer went is deleted now.
    fn settle(&self, state: &mut State, resource: &ResourceId, key: Key, next: Value) -> Value {
        if meta_str(&next, "deletionTimestamp").is_some() && finalizers(&next).is_empty() {
            let removed = self.commit(state, resource, key, EventType::Deleted, next);
            self.collect_garbage(state, &removed, Propagation::Background);
            self.finish_waiting_deletions(state);
            return removed;
        }
        self.commit(state, resource, key, EventType::Modified, next)
    }

    pub fn delete(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let key = Self::key(info, namespace, name);
        let current = state.object(info, &key, name)?;
        if options
            .precondition_uid
            .as_deref()
            .is_some_and(|uid| Some(uid) != meta_str(&current, "uid"))
            || options
                .precondition_resource_version
                .as_deref()
                .is_some_and(|rv| Some(rv) != meta_str(&current, "resourceVersion"))
        {
            return Err(ApiError::conflict(&info.id, name));
        }
        if options.dry_run {
            return Ok(current);
        }
        Ok(self.delete_locked(&mut state, &info.id, key, current, options.propagation))
    }

    fn delete_locked(
        &self,
        state: &mut State,
        resource: &ResourceId,
        key: Key,
        current: Value,
        propagation: Propagation,
    ) -> Value {
        let is_namespace = *resource == ResourceId::new(NAMESPACES.0, NAMESPACES.1);
        let mut next = current.clone();
        let mut pending = finalizers(&current);
        if propagation == Propagation::Foreground
            && !pending.iter().any(|f| f == FOREGROUND)
            && self.has_dependents(state, &current)
        {
            pending.push(FOREGROUND.to_string());
            set_meta(&mut next, "finalizers", json!(pending));
        }
        let has_content = is_namespace && self.namespace_has_content(state, &key.1);
        if pending.is_empty() && !has_content {
            let removed = self.commit(state, resource, key, EventType::Deleted, next);
            self.collect_garbage(state, &removed, propagation);
            self.finish_waiting_deletions(state);
            return removed;
        }
        if meta_str(&current, "deletionTimestamp").is_none() {
            set_meta(&mut next, "deletionTimestamp", json!(now()));
            set_meta(&mut next, "deletionGracePeriodSeconds", json!(0));
            if is_namespace {
                next["status"] = json!({"phase": "Terminating"});
            }
        }
        let marked = if without_resource_version(&next) == without_resource_version(&current) {
            current
        } else {
            self.commit(state, resource, key.clone(), EventType::Modified, next)
        };
        if propagation == Propagation::Foreground {
            self.collect_garbage(state, &marked, Propagation::Background);
        }
        if is_namespace {
            self.empty_namespace(state, &key.1);
        }
        self.finish_waiting_deletions(state);
        marked
    }

    fn owned_by<'a>(object: &'a Value, uid: &'a str) -> bool {
        metadata(object)["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
    }

    fn has_dependents(&self, state: &State, owner: &Value) -> bool {
        let Some(uid) = meta_str(owner, "uid") else {
            return false;
        };
        state
            .objects
            .values()
            .flat_map(|c| c.values())
            .any(|object| Self::owned_by(object, uid))
    }

    /// Deletes (or, for `Orphan`, releases) what `owner` owned.
    fn collect_garbage(&self, state: &mut State, owner: &Value, propagation: Propagation) {
        let Some(uid) = meta_str(owner, "uid").map(str::to_string) else {
            return;
        };
        let dependents = state.select(|_, _, object| Self::owned_by(object, &uid));
        for (resource, key, object) in dependents {
            if propagation == Propagation::Orphan {
                let mut released = object.clone();
                let kept: Vec<Value> = metadata(&object)["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"].as_str() != Some(uid.as_str()))
                    .cloned()
                    .collect();
                set_meta(&mut released, "ownerReferences", json!(kept));
                self.commit(state, &resource, key, EventType::Modified, released);
            } else if meta_str(&object, "deletionTimestamp").is_none() {
                self.delete_locked(state, &resource, key, object, Propagation::Background);
            }
        }
    }

    fn namespace_has_content(&self, state: &State, namespace: &str) -> bool {
        state.objects.iter().any(|(resource, c)| {
            *resource != ResourceId::new(NAMESPACES.0, NAMESPACES.1)
                && c.keys().any(|(ns, _)| ns == namespace)
        })
    }

    fn empty_namespace(&self, state: &mut State, namespace: &str) {
        let contents = state.select(|_, (ns, _), object| {
            ns == namespace && meta_str(object, "deletionTimestamp").is_none()
        });
        for (resource, key, object) in contents {
            self.delete_locked(state, &resource, key, object, Propagation::Background);
        }
    }

    /// Completes deletions that waited on something now gone: foreground owners whose
    /// dependents are deleted, namespaces that are empty.
    fn finish_waiting_deletions(&self, state: &mut State) {
        loop {
            let namespaces = ResourceId::new(NAMESPACES.0, NAMESPACES.1);
            let ready = state.select(|resource, key, object| {
                meta_str(object, "deletionTimestamp").is_some()
                    && ((finalizers(object).iter().any(|f| f == FOREGROUND)
                        && !self.has_dependents(state, object))
                        || (*resource == namespaces
                            && finalizers(object).is_empty()
                            && !self.namespace_has_content(state, &key.1)))
            });
            let Some((resource, key, mut object)) = ready.into_iter().next() else {
                return;
            };
            let kept: Vec<String> = finalizers(&object)
                .into_iter()
                .filter(|f| f != FOREGROUND)
                .collect();
            set_meta(&mut object, "finalizers", json!(kept));
            self.settle(state, &resource, key, object);
        }
    }

    /// Starts a watch of `resource`. From `since` (a resourceVersion) it replays what followed;
    /// without one (or "0") it first sends every current object as ADDED.
    pub fn watch(&self, resource: &ResourceId, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let state = self.lock();
        let backlog = match since.filter(|&rv| rv > 0) {
            Some(rv) if rv < state.compacted_through => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    state.compacted_through
                )));
            }
            Some(rv) => state
                .history
                .iter()
                .filter(|e| e.revision > rv && e.resource == *resource)
                .cloned()
                .collect(),
            None => state
                .objects
                .get(resource)
                .into_iter()
                .flat_map(|c| c.values())
                .map(|object| {
                    let revision = meta_str(object, "resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    Arc::new(WatchEvent::new(
                        revision,
                        resource,
                        EventType::Added,
                        object.clone(),
                        None,
                    ))
                })
                .collect(),
        };
        Ok(WatchStart {
            backlog,
            live: self.live.subscribe(),
            revision: state.revision,
        })
    }

    /// Fault injection: forget the whole history, so every resume gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.compacted_through = state.revision;
    }
}

/// An events.k8s.io/v1 Event as a core/v1 Event (the field names of the older API).
fn core_event(event: &Value) -> Value {
    let series = &event["series"];
    let count = series["count"]
        .as_i64()
        .or_else(|| event["deprecatedCount"].as_i64())
        .unwrap_or(1);
    let first = [&event["deprecatedFirstTimestamp"], &event["eventTime"]]
        .into_iter()
        .find(|t| t.is_string())
        .cloned()
        .unwrap_or(Value::Null);
    let last = [
        &series["lastObservedTime"],
        &event["deprecatedLastTimestamp"],
        &event["eventTime"],
    ]
    .into_iter()
    .find(|t| t.is_string())
    .cloned()
    .unwrap_or(Value::Null);
    let mut metadata = event["metadata"].clone();
    if let Some(meta) = metadata.as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": metadata,
        "involvedObject": event["regarding"],
        "related": event["related"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "action": event["action"],
        "eventTime": event["eventTime"],
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
        "source": {"component": event["reportingController"]},
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
    })
}
