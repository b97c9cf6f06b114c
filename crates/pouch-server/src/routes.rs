//! Every route the server answers, with who may call each method.
//!
//! The router is built from this table and nothing else ([`Routes`] has no
//! way to add a route without saying who may call it), so the
//! authorization-matrix test (`crates/pouch/tests/authorization.rs`) walks
//! the same table the server serves: a new route without an access rule does
//! not compile, and one whose handler does not enforce its rule fails CI.

use crate::AppState;
use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;
use std::sync::Arc;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (sign-in steps, enrollment with an invite, the public log).
    Public,
    /// A signed-in, unrevoked device.
    Device,
    /// A signed-in device, or the holder of a valid invite of that address.
    DeviceOrInvite,
    /// A signed-in administrator with one of these roles.
    Admin(&'static [pouch_proto::api::AdminRole]),
}

/// One path and the methods it answers.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: Vec<(Method, Access)>,
}

/// A router under construction, with its table.
pub struct Routes {
    router: Router<Arc<AppState>>,
    specs: Vec<RouteSpec>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            specs: Vec::new(),
        }
    }
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path`, answering `methods` (each with who may call it) through `handler`.
    pub fn route(
        mut self,
        path: &'static str,
        methods: &[(Method, Access)],
        handler: MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.specs.push(RouteSpec {
            path,
            methods: methods.to_vec(),
        });
        self.router = self.router.route(path, handler);
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.specs.extend(other.specs);
        self.router = self.router.merge(other.router);
        self
    }

    pub fn specs(&self) -> &[RouteSpec] {
        &self.specs
    }

    pub fn into_router(self) -> Router<Arc<AppState>> {
        self.router
    }
}
