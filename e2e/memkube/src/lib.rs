//! memkube: an in-memory Kubernetes API server for lockkeeper's end-to-end tests and local
//! sandbox. Real HTTP, spoken to by kube-rs and kubectl, with the API semantics the operator
//! relies on. Test and sandbox infrastructure only, never a production component.
//!
//! - [`store`]: objects, versions, conflicts, finalizers, garbage collection, watch history.
//! - [`resources`]: what is served (built-ins and CRD-defined resources).
//! - [`api_error`]: errors as Kubernetes `Status` objects.

pub mod api_error;
pub mod resources;
pub mod store;
