//! The router: a fixed-capacity table from function-ID ranges to services.

use thiserror::Error;

use crate::arch::ArmArchitecture;
use crate::call::{Call, CallContext, Outcome, Results};
use crate::function_id::{Convention, DecodeError, FunctionId, Owner, ServiceQuery};
use crate::registers::{CapturingView, RegisterFile};
use crate::return_code::SmcccReturn;
use crate::service::{FunctionRange, OwnerIdentity, Service};

/// Default number of services a [`Router`] holds.
pub const DEFAULT_MAX_SERVICES: usize = 8;
/// Default number of function ranges a [`Router`] holds.
pub const DEFAULT_MAX_RANGES: usize = 32;
/// Number of distinct top bytes of a function ID (call type, convention, owner).
const BUCKETS: usize = 256;

/// Name under which the built-in Arm Architecture service appears.
pub const ARM_ARCHITECTURE_NAME: &str = "Arm Architecture (built-in)";

/// Error refusing a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RouterError {
    /// Two services claim the same function ID.
    #[error("service `{new}` overlaps service `{existing}` at function ID {id:#010x}")]
    Overlap {
        /// The service already registered (or the new one, for ranges of
        /// one service overlapping each other).
        existing: &'static str,
        /// The service being registered.
        new: &'static str,
        /// The first function ID both claim (SVE hint clear).
        id: u32,
    },
    /// A range is empty, names an invalid owner number, or reads more
    /// arguments than its convention passes.
    #[error("service `{service}` declares an invalid range starting at {first:#010x}")]
    InvalidRange {
        /// The service being registered.
        service: &'static str,
        /// First function ID of the range.
        first: u32,
    },
    /// Two services carry an identity (UID/revision) for the same owner.
    #[error("services `{existing}` and `{new}` both declare an identity for owner {owner:?}")]
    DuplicateIdentity {
        /// The owner both describe.
        owner: Owner,
        /// The service registered first.
        existing: &'static str,
        /// The service being registered.
        new: &'static str,
    },
    /// The router has no room for another service.
    #[error("router is full: it holds at most {capacity} services")]
    TooManyServices {
        /// The service capacity.
        capacity: usize,
    },
    /// The router has no room for the service's ranges.
    #[error("router is full: it holds at most {capacity} function ranges")]
    TooManyRanges {
        /// The range capacity.
        capacity: usize,
    },
}

/// Result of a registration.
pub type Result<T> = core::result::Result<T, RouterError>;

/// Why the router answered NOT_SUPPORTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// `x0` did not decode (reserved bits set in a fast call).
    Malformed(DecodeError),
    /// No service or built-in answer for the ID.
    Unrouted(FunctionId),
}

/// What [`Router::dispatch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// A registered service handled the call.
    Service {
        /// The routed function ID.
        id: FunctionId,
        /// The service's name.
        service: &'static str,
        /// Whether the service answered [`Outcome::Handled`] (the router
        /// wrote no register) rather than [`Outcome::Return`].
        handled: bool,
    },
    /// The router answered itself (Arm Architecture calls, owner queries).
    BuiltIn {
        /// The routed function ID.
        id: FunctionId,
    },
    /// NOT_SUPPORTED was written to `x0`.
    NotSupported(Unsupported),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Service(u8),
    ArmArchitecture,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) range: FunctionRange,
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) target: Target,
}

impl Route {
    const EMPTY: Route = Route {
        range: FunctionRange::fast(Convention::Smc32, Owner::ArmArchitecture, 1, 0),
        start: 0,
        end: 0,
        target: Target::ArmArchitecture,
    };

    fn new(range: FunctionRange, target: Target) -> Route {
        Route {
            range,
            start: range.first_id().raw(),
            end: range.last_id().raw(),
            target,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OwnerSlot {
    /// Function numbers registered for the owner, all conventions and call types.
    pub(crate) call_count: u32,
    /// Index of the service carrying the owner's identity.
    pub(crate) identity: Option<u8>,
}

/// Routes SMCCC calls to services. Built by [`RouterBuilder`], then immutable
/// and shareable between vCPU threads.
///
/// `SERVICES` and `RANGES` bound the tables; nothing is heap-allocated.
pub struct Router<
    S,
    const SERVICES: usize = DEFAULT_MAX_SERVICES,
    const RANGES: usize = DEFAULT_MAX_RANGES,
> {
    pub(crate) services: [Option<S>; SERVICES],
    pub(crate) names: [&'static str; SERVICES],
    pub(crate) identities: [Option<OwnerIdentity>; SERVICES],
    pub(crate) service_count: usize,
    pub(crate) routes: [Route; RANGES],
    pub(crate) route_count: usize,
    /// `buckets[k]..buckets[k + 1]` are the routes whose IDs have top byte
    /// `k` (call type, convention, owner): lookup is one bucket scan.
    pub(crate) buckets: [u8; BUCKETS + 1],
    pub(crate) owners: [OwnerSlot; Owner::COUNT],
    pub(crate) arch: Option<ArmArchitecture>,
}

impl<S, const SERVICES: usize, const RANGES: usize> core::fmt::Debug
    for Router<S, SERVICES, RANGES>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Router")
            .field(
                "services",
                &self.names.get(..self.service_count).unwrap_or(&[]),
            )
            .field("routes", &self.route_count)
            .field("arm_architecture", &self.arch)
            .finish()
    }
}

/// Builds a [`Router`]; every registration is checked here.
pub struct RouterBuilder<
    S,
    const SERVICES: usize = DEFAULT_MAX_SERVICES,
    const RANGES: usize = DEFAULT_MAX_RANGES,
> {
    router: Router<S, SERVICES, RANGES>,
}

impl<S, const SERVICES: usize, const RANGES: usize> core::fmt::Debug
    for RouterBuilder<S, SERVICES, RANGES>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("router", &self.router)
            .finish()
    }
}

impl<S: Service, const SERVICES: usize, const RANGES: usize> Default
    for RouterBuilder<S, SERVICES, RANGES>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Service, const SERVICES: usize, const RANGES: usize> RouterBuilder<S, SERVICES, RANGES> {
    /// An empty builder.
    pub fn new() -> Self {
        RouterBuilder {
            router: Router {
                services: core::array::from_fn(|_| None),
                names: [""; SERVICES],
                identities: [None; SERVICES],
                service_count: 0,
                routes: [Route::EMPTY; RANGES],
                route_count: 0,
                buckets: [0; BUCKETS + 1],
                owners: [OwnerSlot::default(); Owner::COUNT],
                arch: None,
            },
        }
    }

    /// Enables the built-in Arm Architecture service (`SMCCC_VERSION`,
    /// `SMCCC_ARCH_FEATURES`, `SMCCC_ARCH_SOC_ID`).
    ///
    /// Only for VMMs that do not rely on KVM's own: KVM reserves the Arm
    /// Architecture range and never forwards it, so under KVM these answers
    /// are KVM's and this service is reached only by other callers of
    /// [`Router::dispatch`] (other hypervisors, emulators, tests).
    pub fn arm_architecture(&mut self, arch: ArmArchitecture) -> Result<&mut Self> {
        let ranges = [crate::arch::ARCH_RANGE];
        self.insert(
            ARM_ARCHITECTURE_NAME,
            &ranges,
            None,
            Target::ArmArchitecture,
        )?;
        self.router.arch = Some(arch);
        Ok(self)
    }

    /// Registers `service` for the ranges its [`Service::info`] declares.
    ///
    /// Refused, leaving the builder unchanged, if a range is invalid,
    /// overlaps a registered one (the error names both services), another
    /// service already carries an identity for one of its owners, or the
    /// tables are full.
    pub fn register(&mut self, service: S) -> Result<&mut Self> {
        let index = self.router.service_count;
        if index >= SERVICES {
            return Err(RouterError::TooManyServices { capacity: SERVICES });
        }
        let target = Target::Service(
            u8::try_from(index).map_err(|_| RouterError::TooManyServices { capacity: index })?,
        );
        let info = service.info();
        let (name, identity) = (info.name, info.identity);
        self.insert(name, info.ranges, identity, target)?;
        if let Some(slot) = self.router.services.get_mut(index) {
            *slot = Some(service);
        }
        if let Some(slot) = self.router.names.get_mut(index) {
            *slot = name;
        }
        if let Some(slot) = self.router.identities.get_mut(index) {
            *slot = identity;
        }
        self.router.service_count = index + 1;
        Ok(self)
    }

    /// The finished, immutable router.
    pub fn build(self) -> Router<S, SERVICES, RANGES> {
        self.router
    }

    fn insert(
        &mut self,
        name: &'static str,
        ranges: &[FunctionRange],
        identity: Option<OwnerIdentity>,
        target: Target,
    ) -> Result<()> {
        let router = &mut self.router;
        if router
            .route_count
            .checked_add(ranges.len())
            .is_none_or(|n| n > RANGES || n > usize::from(u8::MAX))
        {
            return Err(RouterError::TooManyRanges { capacity: RANGES });
        }
        for (i, range) in ranges.iter().enumerate() {
            let route = Route::new(*range, target);
            if range.is_empty()
                || !range.owner.is_valid()
                || range.arg_count > range.convention.max_args()
            {
                return Err(RouterError::InvalidRange {
                    service: name,
                    first: route.start,
                });
            }
            for existing in router.active_routes() {
                if let Some(id) = overlap(existing, &route) {
                    return Err(RouterError::Overlap {
                        existing: router.name_of(existing.target),
                        new: name,
                        id,
                    });
                }
            }
            for earlier in ranges.iter().take(i) {
                if let Some(id) = overlap(&Route::new(*earlier, target), &route) {
                    return Err(RouterError::Overlap {
                        existing: name,
                        new: name,
                        id,
                    });
                }
            }
            if identity.is_some() {
                if let Some(existing) = router
                    .owner_slot(range.owner)
                    .and_then(|slot| slot.identity)
                {
                    return Err(RouterError::DuplicateIdentity {
                        owner: range.owner,
                        existing: router.name_of(Target::Service(existing)),
                        new: name,
                    });
                }
            }
        }
        // Everything is checked: commit.
        for range in ranges {
            let route = Route::new(*range, target);
            let count = router.route_count;
            let at = router
                .active_routes()
                .partition_point(|r| r.start < route.start);
            if let Some(tail) = router.routes.get_mut(at..=count) {
                tail.rotate_right(1);
                if let Some(slot) = tail.first_mut() {
                    *slot = route;
                }
            }
            router.route_count = count + 1;
            router.rebuild_buckets();
            if let Some(slot) = router.owners.get_mut(usize::from(range.owner.number())) {
                slot.call_count = slot.call_count.saturating_add(range.len());
                if let (Some(_), Target::Service(index)) = (identity, target) {
                    slot.identity = Some(index);
                }
            }
        }
        Ok(())
    }
}

fn overlap(a: &Route, b: &Route) -> Option<u32> {
    (a.start <= b.end && b.start <= a.end).then(|| a.start.max(b.start))
}

impl<S: Service, const SERVICES: usize, const RANGES: usize> Router<S, SERVICES, RANGES> {
    /// Reads `x0` from `regs`, decodes it, routes the call and writes the
    /// results per the call's convention.
    ///
    /// Unknown or malformed IDs get NOT_SUPPORTED in `x0`. The only errors
    /// are the register file's own.
    pub fn dispatch<R: RegisterFile>(
        &self,
        ctx: &CallContext,
        regs: &mut R,
    ) -> core::result::Result<DispatchOutcome, R::Error> {
        let x0 = regs.read_x(0)?;
        self.dispatch_raw(ctx, x0, regs)
    }

    /// Like [`Router::dispatch`], with `x0` already known (for example
    /// from a KVM hypercall exit), saving one register read.
    pub fn dispatch_raw<R: RegisterFile>(
        &self,
        ctx: &CallContext,
        x0: u64,
        regs: &mut R,
    ) -> core::result::Result<DispatchOutcome, R::Error> {
        let id = match FunctionId::decode(x0) {
            Ok(id) => id,
            Err(err) => {
                let convention = if x0 & (1 << 30) != 0 {
                    Convention::Smc64
                } else {
                    Convention::Smc32
                };
                write_results(regs, convention, &Results::code(SmcccReturn::NotSupported))?;
                return Ok(DispatchOutcome::NotSupported(Unsupported::Malformed(err)));
            }
        };
        let Some(route) = self.route(id) else {
            if let Some(results) = self.owner_query(id) {
                write_results(regs, id.convention(), &results)?;
                return Ok(DispatchOutcome::BuiltIn { id });
            }
            write_results(
                regs,
                id.convention(),
                &Results::code(SmcccReturn::NotSupported),
            )?;
            return Ok(DispatchOutcome::NotSupported(Unsupported::Unrouted(id)));
        };
        let call = read_call(regs, id, route.range.arg_count)?;
        match route.target {
            Target::ArmArchitecture => {
                let results = self.arch_call(&call);
                write_results(regs, id.convention(), &results)?;
                Ok(DispatchOutcome::BuiltIn { id })
            }
            Target::Service(index) => {
                let Some(service) = self.service(index) else {
                    write_results(
                        regs,
                        id.convention(),
                        &Results::code(SmcccReturn::NotSupported),
                    )?;
                    return Ok(DispatchOutcome::NotSupported(Unsupported::Unrouted(id)));
                };
                let mut view = CapturingView::new(regs);
                let outcome = service.call(ctx, &call, &mut view);
                if let Some(err) = view.into_error() {
                    return Err(err);
                }
                let handled = match &outcome {
                    Outcome::Return(results) => {
                        write_results(regs, id.convention(), results)?;
                        false
                    }
                    Outcome::Handled => true,
                };
                Ok(DispatchOutcome::Service {
                    id,
                    service: self.name_of(route.target),
                    handled,
                })
            }
        }
    }

    /// Whether `id` reaches a service or a built-in answer.
    pub fn is_routed(&self, id: FunctionId) -> bool {
        self.route(id).is_some() || self.owner_query(id).is_some()
    }

    /// The registered ranges in ascending function-ID order, with the name
    /// of the service serving each.
    pub fn ranges(&self) -> impl Iterator<Item = (FunctionRange, &'static str)> + '_ {
        self.active_routes()
            .iter()
            .map(|r| (r.range, self.name_of(r.target)))
    }

    /// The owners that have at least one registered range.
    pub fn served_owners(&self) -> impl Iterator<Item = Owner> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.call_count > 0)
            .filter_map(|(n, _)| Owner::from_number(u8::try_from(n).ok()?))
    }

    pub(crate) fn service(&self, index: u8) -> Option<&S> {
        self.services
            .get(usize::from(index))
            .and_then(Option::as_ref)
    }

    pub(crate) fn route(&self, id: FunctionId) -> Option<&Route> {
        let key = id.raw();
        let bucket = (key >> 24) as usize;
        let first = usize::from(*self.buckets.get(bucket)?);
        let last = usize::from(*self.buckets.get(bucket + 1)?);
        self.routes
            .get(first..last)?
            .iter()
            .find(|r| r.start <= key && key <= r.end)
    }

    /// The answer to a per-owner Call Count/UID/Revision query not claimed
    /// by a registered range, or `None` if the router does not answer `id`.
    pub(crate) fn owner_query(&self, id: FunctionId) -> Option<Results> {
        let query = id.service_query()?;
        let owner = id.owner();
        if owner == Owner::ArmArchitecture {
            return None;
        }
        let slot = self.owner_slot(owner).filter(|slot| slot.call_count > 0)?;
        let identity = slot
            .identity
            .and_then(|i| self.identities.get(usize::from(i)).copied().flatten());
        match query {
            ServiceQuery::CallCount => Some(Results::value(u64::from(slot.call_count))),
            ServiceQuery::Uid => identity.and_then(|i| i.uid).map(|uid| {
                let [a, b, c, d] = uid.0;
                Results::value(u64::from(a))
                    .with(1, u64::from(b))
                    .with(2, u64::from(c))
                    .with(3, u64::from(d))
            }),
            ServiceQuery::Revision => identity
                .and_then(|i| i.revision)
                .map(|rev| Results::value(u64::from(rev.major)).with(1, u64::from(rev.minor))),
        }
    }
}

impl<S, const SERVICES: usize, const RANGES: usize> Router<S, SERVICES, RANGES> {
    pub(crate) fn active_routes(&self) -> &[Route] {
        self.routes.get(..self.route_count).unwrap_or(&[])
    }

    pub(crate) fn name_of(&self, target: Target) -> &'static str {
        match target {
            Target::ArmArchitecture => ARM_ARCHITECTURE_NAME,
            Target::Service(i) => self.names.get(usize::from(i)).copied().unwrap_or(""),
        }
    }

    /// Recomputes the bucket index from the sorted routes. A route never
    /// spans two buckets: its IDs share call type, convention and owner.
    fn rebuild_buckets(&mut self) {
        let routes = self.routes.get(..self.route_count).unwrap_or(&[]);
        let mut next = 0usize;
        for (bucket, slot) in self.buckets.iter_mut().enumerate() {
            while routes
                .get(next)
                .is_some_and(|r| ((r.start >> 24) as usize) < bucket)
            {
                next += 1;
            }
            // RANGES is checked against u8 at registration, so this fits.
            *slot = u8::try_from(next).unwrap_or(u8::MAX);
        }
    }

    pub(crate) fn owner_slot(&self, owner: Owner) -> Option<&OwnerSlot> {
        self.owners.get(usize::from(owner.number()))
    }
}

fn read_call<R: RegisterFile>(
    regs: &mut R,
    id: FunctionId,
    arg_count: u8,
) -> core::result::Result<Call, R::Error> {
    let convention = id.convention();
    let mut args = [0u64; 17];
    let count = usize::from(arg_count.min(convention.max_args()));
    for (slot, n) in args.iter_mut().take(count).zip(1u8..) {
        *slot = convention.narrow(regs.read_x(n)?);
    }
    Ok(Call { id, args })
}

/// Writes `results` per `convention`: always `x0`, at most `w0`–`w7`
/// (zero-extended) for SMC32 and `x0`–`x17` for SMC64.
fn write_results<R: RegisterFile>(
    regs: &mut R,
    convention: Convention,
    results: &Results,
) -> core::result::Result<(), R::Error> {
    let values = results.as_slice();
    let count = usize::from(convention.max_results());
    for (n, value) in (0..).zip(values.iter().take(count)) {
        regs.write_x(n, convention.narrow(*value))?;
    }
    Ok(())
}
