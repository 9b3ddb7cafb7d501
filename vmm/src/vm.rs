//! Builds a VM from a [`VmConfig`] and runs it until the guest stops it.
//!
//! Two ways in, one way on: [`boot()`] loads a kernel into freshly built parts, [`restore`]
//! gives the same parts the state of a snapshot ([`crate::persist`]), and both hand them to
//! one run loop. `Parts::build` is what they share: the VM and its memory, the vCPUs, the
//! GIC, the console's interrupt and the virtio devices (pmem, blk, rng), all as boot would have
//! them.

use crate::api::{self, ApiHandler, Request};
use crate::boot;
use crate::config::VmConfig;
use crate::devices::console_out::{self, OutputQueue, QueuedOutput};
use crate::devices::serial::{Console, ConsoleState};
use crate::devices::virtio::block::{BlockDevice, BlockOptions};
use crate::devices::virtio::pmem::PmemDevice;
use crate::devices::virtio::rng::{HostRandom, RngDevice};
use crate::devices::virtio::MmioTransport;
use crate::devices::MmioBus;
use crate::disk_image::{self, DiskImage};
use crate::eventloop::{self, ExitSignal};
use crate::fdt::{self, FdtConfig};
use crate::gic::{self, Gic};
use crate::layout;
use crate::memory::{self, Vm};
use crate::persist::{Persist, Stored};
use crate::pmem_backing::PmemBacking;
use crate::sandbox::{self, Category, Sandbox};
use crate::sdei::{self, Sdei};
use crate::snapshot;
use crate::vcpu::state::VcpuState;
use crate::vcpu::{
    self, install_kick_handler, HypercallHandler, Kicker, Vcpu, VcpuControl, VcpuStop,
};
use kvm_ioctls::Kvm;
use mte_memory::SharedGuestMemory;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("Cannot open /dev/kvm (is KVM available and accessible?)")]
    Kvm(#[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Kernel, initrd or device tree loading.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A requested feature is not available.
    #[error("{feature} was requested, but this host's KVM does not offer it ({cap})")]
    Unsupported {
        /// The feature.
        feature: &'static str,
        /// The KVM capability that is missing.
        cap: &'static str,
    },
    /// Creating a vCPU.
    #[error("Cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    /// The GIC.
    #[error(transparent)]
    Gic(#[from] gic::Error),
    /// The device tree.
    #[error(transparent)]
    Fdt(#[from] fdt::Error),
    /// Device set-up.
    #[error("Cannot set up the {what}")]
    Device {
        /// Which device.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] eventloop::Error),
    /// SDEI.
    #[error(transparent)]
    Sdei(#[from] sdei::Error),
    /// The API socket.
    #[error(transparent)]
    Api(api::Error),
    /// A snapshot file.
    #[error(transparent)]
    Snapshot(snapshot::Error),
    /// A snapshot of a VM with other vCPUs.
    #[error(
        "Cannot restore: the snapshot's vCPUs have MPIDRs {snapshot:x?}, this VM's are {vm:x?}"
    )]
    OtherVcpus {
        /// The snapshot's.
        snapshot: Vec<u64>,
        /// This VM's.
        vm: Vec<u64>,
    },
    /// A part of a snapshot that cannot be restored into this VM.
    #[error("Cannot restore the {what} from the snapshot")]
    RestorePart {
        /// Which part.
        what: &'static str,
        /// Why not.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A thread could not be started (or could not install its seccomp filter).
    #[error("Cannot start the thread for vCPU {0}")]
    Thread(u8, #[source] sandbox::Error),
    /// The seccomp filters.
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    /// A virtio-blk image.
    #[error(transparent)]
    Disk(#[from] disk_image::Error),
    /// A virtio-pmem backing.
    #[error(transparent)]
    Pmem(#[from] crate::pmem_backing::Error),
}

impl Error {
    /// Whether the error is the user's to fix (bad input or an unavailable feature) rather
    /// than a failure of refvmm or KVM at run time.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Boot(_)
                | Error::Kvm(_)
                | Error::Api(_)
                | Error::Unsupported { .. }
                | Error::Snapshot(_)
                | Error::OtherVcpus { .. }
                | Error::RestorePart { .. }
                | Error::Pmem(_)
                | Error::Disk(_)
        ) || matches!(self, Error::Memory(e) if e.is_user_error())
    }
}

/// Result of running a VM.
pub type Result<T> = std::result::Result<T, Error>;

/// Refuses, before anything is built, features this KVM lacks.
fn check_features(kvm: &Kvm, cfg: &VmConfig) -> Result<()> {
    use kvm_bindings::{
        KVM_CAP_ARM_MTE, KVM_CAP_ARM_PMU_V3, KVM_CAP_ARM_PTRAUTH_ADDRESS,
        KVM_CAP_ARM_PTRAUTH_GENERIC, KVM_CAP_ARM_SVE,
    };
    let wanted = [
        (cfg.mte, "MTE (--mte)", KVM_CAP_ARM_MTE, "KVM_CAP_ARM_MTE"),
        (
            cfg.features.pmu,
            "A PMU (--pmu)",
            KVM_CAP_ARM_PMU_V3,
            "KVM_CAP_ARM_PMU_V3",
        ),
        (
            cfg.features.sve,
            "SVE (--sve)",
            KVM_CAP_ARM_SVE,
            "KVM_CAP_ARM_SVE",
        ),
        (
            cfg.features.pauth,
            "Pointer authentication (--pauth)",
            KVM_CAP_ARM_PTRAUTH_ADDRESS,
            "KVM_CAP_ARM_PTRAUTH_ADDRESS",
        ),
        (
            cfg.features.pauth,
            "Pointer authentication (--pauth)",
            KVM_CAP_ARM_PTRAUTH_GENERIC,
            "KVM_CAP_ARM_PTRAUTH_GENERIC",
        ),
    ];
    for (asked, feature, cap, name) in wanted {
        if asked && kvm.check_extension_raw(u64::from(cap)) <= 0 {
            return Err(Error::Unsupported { feature, cap: name });
        }
    }
    Ok(())
}

/// What boot and restore build alike, before either gives it a state: built as boot would
/// have it, with every vCPU at reset.
struct Parts {
    vm: Vm,
    mem: Arc<SharedGuestMemory>,
    vcpus: Vec<Vcpu>,
    mpidrs: Vec<u64>,
    kicker: Arc<Kicker>,
    gic: Gic,
    bus: MmioBus,
    /// The virtio-mmio slots in use, as (base, SPI), for the device tree.
    virtio: Vec<(u64, u32)>,
    /// The device threads to start with the vCPUs.
    workers: Vec<DeviceWorker>,
}

/// A device's worker thread, before it starts: it waits on `kick` (an ioeventfd for the
/// device's queue notifications) and then runs `work`.
struct DeviceWorker {
    name: String,
    category: Category,
    kick: EventFd,
    work: Box<dyn FnMut() + Send>,
}

impl DeviceWorker {
    /// The thread's body: serves notifications until its eventfd fails (never, in practice).
    fn serve(mut self) {
        loop {
            match self.kick.read() {
                Ok(_) => (self.work)(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!(
                        "{}: cannot wait for notifications: {e}; the device stops",
                        self.name
                    );
                    return;
                }
            }
        }
    }
}

impl Parts {
    /// The parts, and the console's interrupt (registered as an irqfd): the console itself
    /// is built last, once the GIC holds its state.
    fn build(cfg: &VmConfig) -> Result<(Self, EventFd)> {
        let kvm = Kvm::new().map_err(Error::Kvm)?;
        check_features(&kvm, cfg)?;
        let backing = memory::choose(
            cfg.memory_backing,
            &mte_memory::pages::HostPolicy::read(),
            cfg.memory,
            None,
        );
        // Said whatever the log level: the page size decides much of the guest's speed.
        eprintln!("refvmm: guest RAM: {} MiB of {backing}", cfg.memory >> 20);
        let (mut vm, mem) = memory::create(&kvm, cfg.memory, cfg.mte, &backing)?;
        log::info!(
            "guest memory ready ({} MiB, MTE {})",
            cfg.memory >> 20,
            cfg.mte
        );
        let base_init = Vcpu::preferred_init(vm.fd())?;
        let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
        for i in 0..cfg.cpus {
            let fd = vm
                .fd()
                .create_vcpu(u64::from(i))
                .map_err(|e| Error::CreateVcpu(i, e))?;
            vcpus.push(Vcpu::new(fd, i, &base_init, cfg.features)?);
        }
        let mpidrs: Vec<u64> = vcpus.iter().map(Vcpu::mpidr).collect();
        let kicker = Arc::new(Kicker::new(vcpus.len()));
        install_kick_handler().map_err(|source| Error::Device {
            what: "vCPU kick signal",
            source,
        })?;
        let mut gic = Gic::new(vm.fd(), &mpidrs)?;
        if cfg.its {
            gic.add_its(vm.fd())?;
        }
        if cfg.features.pmu {
            for v in &vcpus {
                v.init_pmu(layout::PMU_PPI)?;
            }
        }
        log::info!("{} vCPUs and the GIC ready", cfg.cpus);
        let mut bus = MmioBus::default();
        let uart_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Device {
            what: "console interrupt",
            source,
        })?;
        vm.fd()
            .register_irqfd(&uart_irq, layout::UART_SPI)
            .map_err(|e| Error::Device {
                what: "console interrupt",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        let mut virtio = add_pmem_devices(cfg, &mut vm, &mem, &mut bus)?;
        let mut workers = Vec::with_capacity(cfg.disks.len());
        for (i, disk) in cfg.disks.iter().enumerate() {
            let (slot, worker) = add_block_device(i, virtio.len(), disk, &vm, &mem, &mut bus)?;
            virtio.push(slot);
            workers.push(worker);
        }
        if cfg.rng {
            virtio.push(add_rng_device(virtio.len(), &vm, &mem, &mut bus)?);
        }
        let parts = Parts {
            vm,
            mem,
            vcpus,
            mpidrs,
            kicker,
            gic,
            bus,
            virtio,
            workers,
        };
        Ok((parts, uart_irq))
    }

    /// SDEI for these vCPUs, as at boot.
    fn sdei(&self, cfg: &VmConfig) -> Result<Sdei> {
        let reset_init = self.vcpus.first().map(Vcpu::reset_init).unwrap_or_default();
        Ok(Sdei::new(
            &self.mpidrs,
            cfg.mte,
            self.kicker.clone(),
            reset_init,
        )?)
    }
}

/// Boots the kernel (and initrd) `cfg` names and runs the VM; returns how the guest
/// stopped it.
pub fn boot(cfg: &VmConfig) -> Result<VcpuStop> {
    let (parts, uart_irq) = Parts::build(cfg)?;
    let loaded = boot::load_images(parts.mem.memory(), cfg)?;
    let blob = fdt::build(&FdtConfig {
        mpidrs: parts.mpidrs.clone(),
        memory: cfg.memory,
        cmdline: cfg.cmdline.clone(),
        initrd: loaded.initrd,
        sdei: cfg.sdei,
        pmu: cfg.features.pmu,
        its: cfg.its,
        virtio: parts.virtio.clone(),
    })?;
    let fdt_addr = boot::write_fdt(parts.mem.memory(), cfg.memory, &blob)?;
    if let Some(boot_cpu) = parts.vcpus.first() {
        boot_cpu.set_boot_regs(loaded.entry, fdt_addr)?;
    }
    let sdei = cfg.sdei.then(|| parts.sdei(cfg)).transpose()?;
    let console_out = OutputQueue::new(console_out::CAPACITY);
    let console = Console::new(uart_irq, console_out.writer());
    run(cfg, parts, sdei, console, console_out)
}

/// Restores the snapshot `snapshot` (whose manifest gave `cfg`, see
/// [`crate::config::RestoreRequest::config`]) and runs the VM; returns how the guest
/// stopped it.
pub fn restore(cfg: &VmConfig, snapshot: snapshot::Reader) -> Result<VcpuStop> {
    let (parts, uart_irq) = Parts::build(cfg)?;
    if snapshot.manifest.mpidrs != parts.mpidrs {
        return Err(Error::OtherVcpus {
            snapshot: snapshot.manifest.mpidrs.clone(),
            vm: parts.mpidrs,
        });
    }
    memory::restore_ram(&snapshot, &parts.vm, &parts.mem)
        .map_err(|e| restore_part("guest memory", e))?;
    let parts = restore_vcpus_and_gic(&snapshot, parts)?;
    let sdei = if cfg.sdei {
        let state = snapshot
            .state::<sdei::SdeiState>()
            .map_err(Error::Snapshot)?;
        Some(
            parts
                .sdei(cfg)?
                .restore(&state)
                .map_err(|e| restore_part("SDEI state", e))?,
        )
    } else {
        None
    };
    // The console comes after the GIC: restoring one raises its pending interrupt again,
    // which the GIC must not wipe with its own restored state.
    let state = snapshot.state::<ConsoleState>().map_err(Error::Snapshot)?;
    let console_out = OutputQueue::new(console_out::CAPACITY);
    let console = Console::new(uart_irq, console_out.writer())
        .restore(&state)
        .map_err(|e| restore_part("console state", e))?;
    log::info!("restored from {}", snapshot.dir().display());
    run(cfg, parts, sdei, console, console_out)
}

/// Puts the saved vCPU states, then the GIC's, into the built vCPUs and GIC. Everything that
/// can be checked without KVM is checked before any vCPU is written.
fn restore_vcpus_and_gic(snapshot: &snapshot::Reader, mut parts: Parts) -> Result<Parts> {
    let vcpus = std::mem::take(&mut parts.vcpus);
    let mut states: Vec<VcpuState> = snapshot.state().map_err(Error::Snapshot)?;
    crate::vcpu::state::unify_counters(&mut states);
    if states.len() != vcpus.len() {
        return Err(restore_part(
            "vCPU state",
            crate::vcpu::state::Error::Count {
                states: states.len(),
                vcpus: vcpus.len(),
            },
        ));
    }
    for (i, st) in states.iter().enumerate() {
        st.check(i).map_err(|e| restore_part("vCPU state", e))?;
    }
    let gic_state: gic::state::GicState = snapshot.state().map_err(Error::Snapshot)?;
    gic_state
        .check_fits(&parts.mpidrs, layout::GIC_NR_IRQS)
        .map_err(|e| restore_part("GIC state", e))?;
    let vcpus = vcpus
        .into_iter()
        .zip(&states)
        .map(|(v, st)| v.restore(st))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| restore_part("vCPU state", e))?;
    let gic = parts
        .gic
        .restore(&gic_state)
        .map_err(|e| restore_part("GIC state", e))?;
    Ok(Parts {
        vcpus,
        gic,
        ..parts
    })
}

fn restore_part(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::RestorePart {
        what,
        source: Box::new(e),
    }
}

/// Everything a running VM holds that the API needs (pause, snapshot).
struct Machine {
    cfg: VmConfig,
    vm: Vm,
    mem: Arc<SharedGuestMemory>,
    gic: Gic,
    console: Arc<Mutex<Console<QueuedOutput>>>,
    sdei: Option<Arc<Sdei>>,
    kicker: Arc<Kicker>,
    control: Arc<VcpuControl>,
    mpidrs: Vec<u64>,
    exit: ExitSignal,
}

/// How long the end of the VM waits for the vCPU threads to leave (one busy in a device,
/// say a flush to a slow disk, finishes that first).
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The run loop boot and restore meet in: starts the threads (vCPUs, console output, API),
/// serves events until the guest or the operator stops the VM, then stops the vCPUs and
/// waits until they have returned.
fn run(
    cfg: &VmConfig,
    parts: Parts,
    sdei: Option<Sdei>,
    console: Console<QueuedOutput>,
    console_out: Arc<OutputQueue>,
) -> Result<VcpuStop> {
    let Parts {
        vm,
        mem,
        vcpus,
        mpidrs,
        kicker,
        gic,
        bus,
        workers,
        ..
    } = parts;
    let mut bus = bus;
    let sdei = sdei.map(Arc::new);
    if let Some(s) = &sdei {
        s.install_filter(vm.fd())?;
        s.sync_power(vcpus.iter().map(Vcpu::fd))?;
    }
    let console = Arc::new(Mutex::new(console));
    bus.insert(layout::UART_BASE, layout::UART_SIZE, console.clone())
        .map_err(|e| Error::Device {
            what: "console",
            source: std::io::Error::other(e),
        })?;
    let exit = ExitSignal::new().map_err(|source| Error::Device {
        what: "exit notification",
        source,
    })?;
    let control = Arc::new(VcpuControl::new(vcpus.len()));
    let machine = Arc::new(Machine {
        cfg: cfg.clone(),
        vm,
        mem: mem.clone(),
        gic,
        console: console.clone(),
        sdei: sdei.clone(),
        kicker: kicker.clone(),
        control: control.clone(),
        mpidrs,
        exit: exit.clone(),
    });
    let bus = Arc::new(bus);
    let sandbox = Arc::new(Sandbox::new(cfg.seccomp)?);
    // vCPU threads install their own filter, then wait until the main thread has installed
    // its own (so that they never run the guest before the VMM is sandboxed).
    let start = Arc::new(Barrier::new(usize::from(cfg.cpus) + 1));
    log::info!("starting the vCPUs");
    let hooks: Option<Arc<dyn HypercallHandler>> =
        sdei.clone().map(|s| s as Arc<dyn HypercallHandler>);
    // Guest output reaches stdout on a thread of its own: a stalled stdout never blocks a vCPU.
    let drain = console_out.clone();
    let _ = sandbox.spawn(Category::Console, "console".into(), move || {
        drain.drain_to(&mut std::io::stdout())
    })?;
    let api = match &cfg.api_socket {
        Some(socket) => {
            let listener = api::bind(socket).map_err(Error::Api)?;
            // The API thread blocks in accept.
            listener
                .set_nonblocking(false)
                .map_err(|source| Error::Device {
                    what: "API socket",
                    source,
                })?;
            let handler: Arc<dyn ApiHandler> = Arc::new(VmApi {
                machine: machine.clone(),
            });
            let (bridge, queue) =
                eventloop::api_channel(handler).map_err(|source| Error::Device {
                    what: "API request queue",
                    source,
                })?;
            let access = api::Access::new(&socket.allowed_uids);
            let idle = Arc::new(api::Idle::default());
            let thread_idle = idle.clone();
            // Detached: it serves until the process exits.
            let _ = sandbox.spawn(Category::Api, "api".into(), move || {
                api::serve(listener, &bridge, &access, &thread_idle)
            })?;
            Some((queue, idle))
        }
        None => None,
    };
    for w in workers {
        // Detached: a device thread serves until the process exits.
        let _ = sandbox.spawn(w.category, w.name.clone(), move || w.serve())?;
    }
    let mut threads = Vec::with_capacity(vcpus.len());
    for (i, mut v) in (0u8..).zip(vcpus) {
        let bus = bus.clone();
        // Guest RAM stays mapped while a vCPU thread may still run the guest.
        let ram = mem.clone();
        let exit = exit.clone();
        let hooks = hooks.clone();
        let control = control.clone();
        let start = start.clone();
        let kicks = kicker.clone();
        let t = sandbox
            .spawn(Category::Vcpu, format!("vcpu{i}"), move || {
                // Kicks reach this thread from here on, and none once it has exited.
                let _registered = kicks.register_current(usize::from(i));
                start.wait();
                let stop = match v.run(&bus, hooks.as_ref(), &control) {
                    Ok(stop) => stop,
                    Err(e) => {
                        eprintln!("refvmm: {}", crate::error_chain(&e));
                        VcpuStop::Crash
                    }
                };
                exit.signal(stop);
                drop(ram);
            })
            .map_err(|e| Error::Thread(i, e))?;
        threads.push(t);
    }
    let stop = eventloop::run(console, &exit, api, || {
        sandbox.apply(Category::Vmm)?;
        start.wait();
        Ok(())
    })?;
    if let Some(s) = &cfg.api_socket {
        let _ = std::fs::remove_file(&s.path);
    }
    // Keep the guest's last output (a kernel's final lines before it powers off).
    if !console_out.wait_empty(std::time::Duration::from_secs(2)) {
        log::warn!("console: stdout did not take the guest's last output within 2 s; it is lost");
    }
    log::info!("the VM stopped: {stop:?}");
    stop_vcpus(&control, &kicker, threads);
    Ok(stop)
}

/// Makes every vCPU thread leave its run loop and waits (up to [`VCPU_STOP_TIMEOUT`]) until
/// each has returned, having dropped its vCPU and its hold on guest RAM; one that has not is
/// left to the process's exit, still holding guest RAM.
///
/// The threads are not joined: a finished thread has nothing left to do but exit, and
/// `pthread_join` would wait on a shared futex, which the main thread's filter does not allow.
fn stop_vcpus(control: &VcpuControl, kicker: &Kicker, threads: Vec<std::thread::JoinHandle<()>>) {
    control.stop(kicker);
    let deadline = std::time::Instant::now() + VCPU_STOP_TIMEOUT;
    loop {
        let busy = threads.iter().filter(|t| !t.is_finished()).count();
        if busy == 0 {
            return;
        }
        if std::time::Instant::now() >= deadline {
            log::warn!(
                "{busy} vCPU thread(s) still busy {} s after the VM stopped",
                VCPU_STOP_TIMEOUT.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Maps each `--pmem` backing, registers it as a memory slot at its place above RAM, and puts
/// a virtio-pmem device on the MMIO bus with an irqfd for its SPI; returns the virtio-mmio
/// slots used, as (base, SPI), for the device tree.
fn add_pmem_devices(
    cfg: &VmConfig,
    vm: &mut Vm,
    mem: &SharedGuestMemory,
    bus: &mut MmioBus,
) -> Result<Vec<(u64, u32)>> {
    let sizes: Vec<u64> = cfg.pmem.iter().map(|p| p.size).collect();
    let bases = layout::pmem_bases(cfg.memory, &sizes).ok_or_else(|| Error::Device {
        what: "pmem regions",
        source: std::io::Error::other("they do not fit below the guest-physical address limit"),
    })?;
    if cfg.pmem.iter().any(|p| p.readonly) {
        // Guest stores KVM cannot decode (no valid syndrome: stp, ldp/stp pairs in memcpy) to
        // a read-only slot would otherwise fail KVM_RUN and stop the VM; with this they exit
        // to refvmm, which drops them (`vcpu::Vcpu::run`).
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_ARM_NISV_TO_USER,
            ..Default::default()
        };
        vm.fd().enable_cap(&cap).map_err(|e| Error::Device {
            what: "read-only virtio-pmem (KVM_CAP_ARM_NISV_TO_USER, Linux 5.5)",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    }
    let mut slots = Vec::with_capacity(cfg.pmem.len());
    for (i, (pcfg, base)) in cfg.pmem.iter().zip(bases).enumerate() {
        let device_err = |source: std::io::Error| Error::Device {
            what: "virtio-pmem device",
            source,
        };
        let (mmio_base, spi) = layout::virtio_slot(i)
            .ok_or_else(|| device_err(std::io::Error::other("no virtio-mmio slot left")))?;
        let backing = PmemBacking::open(pcfg, i, cfg.mte)?;
        let slot = vm.add_pmem(i, GuestAddress(base), backing.mapping(), pcfg.readonly)?;
        if pcfg.readonly {
            bus.add_read_only_memory(base, pcfg.size);
        }
        log::info!(
            "pmem{i}: {} (fd {}, {} MiB{}) at {base:#x}, memory slot {slot}, virtio-mmio \
             {mmio_base:#x} SPI {spi}",
            backing.describe(),
            std::os::fd::AsRawFd::as_raw_fd(backing.file().as_ref()),
            pcfg.size >> 20,
            if pcfg.readonly { ", read-only" } else { "" },
        );
        let device = PmemDevice::new(base, pcfg.size, backing);
        let _ = insert_virtio(vm, mem, bus, (mmio_base, spi), device).map_err(device_err)?;
        slots.push((mmio_base, spi));
    }
    Ok(slots)
}

/// Puts a virtio-rng device in virtio-mmio slot `index`; returns the slot as (base, SPI), for
/// the device tree.
fn add_rng_device(
    index: usize,
    vm: &Vm,
    mem: &SharedGuestMemory,
    bus: &mut MmioBus,
) -> Result<(u64, u32)> {
    let device_err = |source: std::io::Error| Error::Device {
        what: "virtio-rng device",
        source,
    };
    let slot = layout::virtio_slot(index)
        .ok_or_else(|| device_err(std::io::Error::other("no virtio-mmio slot left")))?;
    let _ = insert_virtio(vm, mem, bus, slot, RngDevice::new(HostRandom)).map_err(device_err)?;
    log::info!(
        "rng: getrandom(2), virtio-mmio {:#x} SPI {}",
        slot.0,
        slot.1
    );
    Ok(slot)
}

/// Opens and locks the image of `--disk` number `disk` and puts a virtio-blk device for it in
/// virtio-mmio slot `index`, its queue notifications on an ioeventfd for the worker thread
/// returned with the slot.
fn add_block_device(
    disk: usize,
    index: usize,
    cfg: &crate::config::disk::DiskConfig,
    vm: &Vm,
    mem: &SharedGuestMemory,
    bus: &mut MmioBus,
) -> Result<((u64, u32), DeviceWorker)> {
    let device_err = |source: std::io::Error| Error::Device {
        what: "virtio-blk device",
        source,
    };
    let slot = layout::virtio_slot(index)
        .ok_or_else(|| device_err(std::io::Error::other("no virtio-mmio slot left")))?;
    let image = DiskImage::open(cfg)?;
    log::info!(
        "blk{disk}: {}{}{}, virtio-mmio {:#x} SPI {}",
        image.describe(),
        if cfg.readonly { ", read-only" } else { "" },
        if cfg.direct { ", O_DIRECT" } else { "" },
        slot.0,
        slot.1
    );
    let opts = BlockOptions {
        readonly: cfg.readonly,
        block_size: if cfg.direct { 4096 } else { 512 },
        serial: cfg.serial.clone(),
    };
    let transport =
        insert_virtio(vm, mem, bus, slot, BlockDevice::new(image, opts)).map_err(device_err)?;
    // Blocking: the worker sleeps in read until the guest notifies the queue.
    let kick = EventFd::new(0).map_err(device_err)?;
    let notify = slot.0 + crate::devices::virtio::mmio::reg::QUEUE_NOTIFY;
    // The driver writes the queue's index, 0, as a 32-bit value; any other write still reaches
    // the transport (and names no queue that does I/O).
    vm.fd()
        .register_ioevent(&kick, &kvm_ioctls::IoEventAddress::Mmio(notify), 0u32)
        .map_err(|e| device_err(std::io::Error::from_raw_os_error(e.errno())))?;
    let work = Box::new(move || match transport.lock() {
        Ok(mut t) => t.notify(0),
        Err(_) => log::error!("virtio-blk: the device's lock is poisoned"),
    });
    let worker = DeviceWorker {
        name: format!("blk{disk}"),
        category: Category::Block,
        kick,
        work,
    };
    Ok((slot, worker))
}

/// Puts `device` behind a virtio-mmio transport at `(base, spi)` on the bus, its interrupt an
/// irqfd for the SPI; returns the transport (for a device thread).
fn insert_virtio<D: crate::devices::virtio::VirtioDevice + 'static>(
    vm: &Vm,
    mem: &SharedGuestMemory,
    bus: &mut MmioBus,
    (base, spi): (u64, u32),
    device: D,
) -> std::io::Result<Arc<Mutex<MmioTransport<D>>>> {
    let irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.fd()
        .register_irqfd(&irq, spi)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let transport = MmioTransport::new(device, mem.memory().clone(), Box::new(irq))
        .map_err(std::io::Error::other)?;
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(base, layout::VIRTIO_SIZE, transport.clone())
        .map_err(std::io::Error::other)?;
    Ok(transport)
}

/// Where each paused vCPU stands: `vcpu<i> pc <pc> pstate <pstate>` (for operators and
/// post-mortems of a guest that hangs).
fn where_stopped(states: &[VcpuState]) -> String {
    let reg = |st: &VcpuState, id| st.reg_u64(id).unwrap_or(0);
    states
        .iter()
        .enumerate()
        .map(|(i, st)| {
            format!(
                "vcpu{i} pc {:#x} pstate {:#x}",
                reg(st, crate::regs::PC),
                reg(st, crate::regs::PSTATE)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    fn snapshot(&self, dir: &std::path::Path) -> std::result::Result<String, String> {
        if self.cfg.its {
            return Err("snapshots of VMs with an ITS are not supported yet".into());
        }
        if !self.cfg.pmem.is_empty() {
            return Err("snapshots of VMs with virtio-pmem devices are not supported yet".into());
        }
        if !self.cfg.disks.is_empty() {
            return Err("snapshots of VMs with virtio-blk devices are not supported yet".into());
        }
        if self.cfg.rng {
            return Err("snapshots of VMs with a virtio-rng device are not supported yet".into());
        }
        let was_paused = self.control.is_paused();
        let t0 = std::time::Instant::now();
        let states = self.pause_settled(was_paused);
        let result = states.and_then(|states| self.write_snapshot(dir, &states));
        match &result {
            Ok(_) => log::info!("snapshot written to {}", dir.display()),
            Err(e) => {
                // The writer has already removed what it created; nothing else is touched.
                log::warn!("snapshot to {} failed: {e}", dir.display());
                if !was_paused {
                    self.control.resume();
                }
            }
        }
        result.map(|(bytes, tag_bytes, tag_ms)| {
            format!(
                "snapshot {} bytes {bytes} ms {} tags-bytes {tag_bytes} tags-ms {tag_ms} (paused)",
                dir.display(),
                t0.elapsed().as_millis()
            )
        })
    }

    /// Pauses the vCPUs (see `VcpuControl::pause`) at a moment when no PSCI `CPU_ON` is half
    /// done: an accepted `CPU_ON` whose vCPU has not started yet lives only in the power table,
    /// which a snapshot does not hold, so the VM runs on for a moment (10 ms at a time, up to
    /// a second) until the vCPU has started. A VM the operator paused is not resumed for this.
    fn pause_settled(&self, was_paused: bool) -> std::result::Result<Vec<VcpuState>, String> {
        for _ in 0..100 {
            let states = self.control.pause(&self.kicker)?;
            if !self.sdei.as_ref().is_some_and(|s| s.power_change_pending()) {
                return Ok(states);
            }
            if was_paused {
                return Err(
                    "a PSCI CPU_ON is under way in the paused VM; resume it and retry".into(),
                );
            }
            self.control.resume();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err("a PSCI CPU_ON stayed under way for a second; no snapshot was taken".into())
    }

    fn write_snapshot(
        &self,
        dir: &std::path::Path,
        states: &[VcpuState],
    ) -> std::result::Result<(u64, u64, u128), String> {
        let e = |e: snapshot::Error| crate::error_chain(&e);
        let part =
            |what: &str, x: &dyn std::error::Error| format!("{what}: {}", crate::error_chain(x));
        let mut w = snapshot::Writer::create(dir).map_err(e)?;
        w.put_state(&states.to_vec()).map_err(e)?;
        let gic = self.gic.save().map_err(|x| part("GIC state", &x))?;
        w.put_state(&gic).map_err(e)?;
        memory::save_ram(&self.mem, &mut w).map_err(e)?;
        let (mut tag_bytes, mut tag_ms) = (0, 0);
        if let Some(tags) = memory::Tags::of(&self.vm, &self.mem) {
            let t = std::time::Instant::now();
            let tags = tags.save().map_err(|x| part("MTE tags", &x))?;
            let bytes = tags.encode().map_err(e)?;
            tag_bytes = bytes.len() as u64;
            w.put(memory::MteTags::FILE, &bytes).map_err(e)?;
            tag_ms = t.elapsed().as_millis();
        }
        if let Some(s) = &self.sdei {
            let state = s.save().map_err(|x| part("SDEI state", &x))?;
            w.put_state(&state).map_err(e)?;
        }
        let console = self
            .console
            .lock()
            .map_err(|_| "console lock poisoned".to_string())?
            .save()
            .map_err(|x| part("console state", &x))?;
        w.put_state(&console).map_err(e)?;
        // The size is counted while writing: listing the directory would need getdents64 and
        // fstat, which the main thread's filter does not allow.
        let total = w
            .finish(snapshot::VmShape::of(&self.cfg), self.mpidrs.clone())
            .map_err(e)?;
        Ok((total, tag_bytes, tag_ms))
    }
}

/// The VM as the API sees it.
struct VmApi {
    machine: Arc<Machine>,
}

impl ApiHandler for VmApi {
    fn handle(&self, request: Request) -> std::result::Result<String, String> {
        let m = &self.machine;
        match request {
            Request::Status => Ok(if m.control.is_paused() {
                "paused"
            } else {
                "running"
            }
            .into()),
            Request::Pause => m
                .control
                .pause(&m.kicker)
                .map(|states| format!("paused {}", where_stopped(&states))),
            Request::Resume => {
                m.control.resume();
                Ok("running".into())
            }
            Request::Snapshot { dir } => m.snapshot(&dir),
            Request::Quit => {
                m.exit.signal(VcpuStop::Requested);
                Ok("quitting".into())
            }
            Request::SdeiSignal { event, vcpu } => {
                let sdei = m
                    .sdei
                    .as_ref()
                    .ok_or("SDEI is not enabled (start refvmm with --sdei)")?;
                match sdei.raise(event, vcpu) {
                    Ok(sdei_dispatch::RaiseOutcome::Pending) => Ok("pending".into()),
                    Ok(sdei_dispatch::RaiseOutcome::AlreadyPending) => Ok("already-pending".into()),
                    Ok(sdei_dispatch::RaiseOutcome::NotRegistered) => Ok("not-registered".into()),
                    Ok(sdei_dispatch::RaiseOutcome::NotBound) => Ok("not-bound".into()),
                    Err(e) => Err(crate::error_chain(&e)),
                }
            }
        }
    }
}
