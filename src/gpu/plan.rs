//! Dispatch plans: one step recorded without knowing a count that only the GPU knows yet.
//!
//! An unpinned cluster mask's keep count k (M3.4) is computed on the device, and every shape of
//! the image tower depends on it: the dense [N, 1 + k, D] tensor. Rather than read k back in the
//! middle of the step (a wait, and a GPU idle while the host records the rest), the host
//!
//! 1. records the step *dry* (nothing allocated, nothing run) once for every k the mask can
//!    give, and keeps each dispatch's params and workgroup counts ([`Gpu::build_plan`]);
//! 2. records the real step once at the largest k, buffers sized for it, with every dispatch
//!    whose params or grid change with k reading them from a table row that a small kernel
//!    (`shaders/dispatch_plan.wgsl`) picks by the k on the device ([`Gpu::begin_plan`]), through
//!    an indirect dispatch.
//!
//! So the step is one submit with no read, and computes on k tokens, not on the largest k.
//! A kernel choice that depends on k (a vec4 entry point for a row length 1 + k, a matmul
//! layout) cannot change inside one recording: the dry runs find those choice sites and hold
//! them to a form valid for every k ([`Gpu::choice_site`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{Gpu, GpuBuf};

/// Uniform slots of the plan's params buffer: WebGPU's uniform offset alignment.
pub(super) const SLOT_WORDS: usize = 64;

/// The highest level a choice site can be held to (see [`Gpu::choice_site`]).
const MAX_FORCE: u8 = 2;

/// What a dry run saw, in recording order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PlanEvent {
    Dispatch {
        kernel: String,
        params: Vec<u32>,
        groups: [u32; 3],
        /// The choice site in effect (the last one asked), or `usize::MAX` before any.
        site: usize,
    },
    /// Host data written into a buffer (upload, fill): must not depend on k. Its length and
    /// FNV-1a hash, not the bytes (a batch of images would be kept once per count).
    Write { len: usize, hash: u64 },
    Copy {
        src_offset: usize,
        dst_offset: usize,
        len: usize,
    },
    /// A cleared buffer: the live recording clears the largest, a superset.
    Clear,
}

/// The recorder's state during a dry run.
#[derive(Default)]
pub(super) struct DryRun {
    pub events: Vec<PlanEvent>,
    pub forced: HashMap<usize, u8>,
    pub sites: usize,
}

/// A dispatch as the plan machinery sees it (`Gpu::plan_dispatch`).
pub(super) enum PlanRole {
    /// Logged by a dry run: record nothing.
    Logged,
    /// Record as given.
    Static,
    /// Record with the params slot and indirect grid of this entry of the plan.
    Picked(Arc<DispatchPlan>, usize),
}

/// The recorder's state while a plan records: which planned dispatch comes next.
pub(super) struct ActivePlan {
    pub plan: Arc<DispatchPlan>,
    pub ordinal: usize,
    pub sites: usize,
}

/// One dispatch of a plan.
#[derive(Debug)]
pub(super) struct PlannedDispatch {
    pub kernel: String,
    /// Its entry in the table when its params or grid change with k.
    pub dynamic: Option<usize>,
}

/// A step recorded for every count in `counts` (see the module docs). Build it once per
/// batch shape and reuse it every step.
pub struct DispatchPlan {
    pub counts: RangeInclusive<usize>,
    pub(super) dispatches: Vec<PlannedDispatch>,
    pub(super) forced: HashMap<usize, u8>,
    /// [counts, row_words]: per count, each dynamic dispatch's params words, then its grid.
    table: GpuBuf,
    /// [dynamic, 2]: where each dynamic dispatch's words start in a row, and how many params.
    entries: GpuBuf,
    /// [dynamic, SLOT_WORDS], uniform and storage: the params of the count on the device.
    pub(super) params: GpuBuf,
    /// [dynamic, 3], indirect and storage: the grids of the count on the device.
    pub(super) indirect: GpuBuf,
    row_words: usize,
    host_table: Vec<u32>,
    host_entries: Vec<u32>,
    build_seconds: f64,
}

impl DispatchPlan {
    /// Dispatches of the step whose params or grid depend on the count.
    pub fn dynamic_dispatches(&self) -> usize {
        self.entries.len() / 2
    }

    pub fn dispatches(&self) -> usize {
        self.dispatches.len()
    }

    /// Choice sites held to a form valid for every count.
    pub fn forced_sites(&self) -> usize {
        self.forced.len()
    }

    /// Seconds the dry runs took (0 in the browser, which has no clock here).
    pub fn build_seconds(&self) -> f64 {
        self.build_seconds
    }

    /// The table and entries the `pick` kernel reads, and the table's row length (tests hold
    /// the kernel to its CPU twin, [`cpu::pick`]).
    pub fn host_table(&self) -> (&[u32], &[u32], usize) {
        (&self.host_table, &self.host_entries, self.row_words)
    }

    /// What the last `pick` wrote: the params slots and the grids.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_picked(&self, gpu: &Gpu) -> Result<(Vec<u32>, Vec<u32>), super::GpuError> {
        Ok((gpu.read_u32(&self.params)?, gpu.read_u32(&self.indirect)?))
    }
}

crate::kernel_params! {
    /// The uniform of `shaders/dispatch_plan.wgsl`.
    pub(crate) struct Params for "dispatch_plan" {
        entries: u32,
        row_words: u32,
        first_count: u32,
        last_count: u32,
    }
}

impl Gpu {
    /// Where a kernel is chosen by shape (an op's `vec4` twin, a matmul's entry point), the op
    /// asks here first: 0 = choose freely; 1 and 2 = the plan being recorded holds this site
    /// to a choice valid for every count (1: no layout-specific form, such as the scalar twin
    /// of a vec4 entry point or a matmul without transposed copies or subgroups; 2: the
    /// matmul's strided kernel). Outside plans and dry runs always 0.
    pub fn choice_site(&self) -> u8 {
        let mut rec = self.recorder.lock().unwrap();
        if let Some(dry) = rec.dry.as_mut() {
            let site = dry.sites;
            dry.sites += 1;
            return dry.forced.get(&site).copied().unwrap_or(0);
        }
        if let Some(active) = rec.active.as_mut() {
            let site = active.sites;
            active.sites += 1;
            return active.plan.forced.get(&site).copied().unwrap_or(0);
        }
        0
    }

    /// Whether a dry run is recording (allocations are detached, nothing is recorded).
    pub(super) fn dry(&self) -> bool {
        self.recorder.lock().unwrap().dry.is_some()
    }

    /// Runs `record` dry with `forced` choice sites: what it would record, in order.
    fn dry_run<T>(
        &self,
        forced: &HashMap<usize, u8>,
        record: impl FnOnce() -> T,
    ) -> (T, Vec<PlanEvent>) {
        {
            let mut rec = self.recorder.lock().unwrap();
            assert!(
                rec.dry.is_none() && rec.active.is_none(),
                "a dry run inside a plan or another dry run"
            );
            rec.dry = Some(DryRun {
                forced: forced.clone(),
                ..DryRun::default()
            });
        }
        // Unwinding out of `record` must not leave the recorder dry.
        struct Reset<'a>(&'a Gpu);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if let Ok(mut rec) = self.0.recorder.lock() {
                    rec.dry = None;
                }
            }
        }
        let reset = Reset(self);
        let out = record();
        let events = self.recorder.lock().unwrap().dry.take().unwrap().events;
        drop(reset);
        (out, events)
    }

    /// Records `record(k)` dry for every k in `counts` and builds the plan that replays the
    /// recording at the largest k with the params and grids of the k on the device. `record`
    /// must record the same work for every k apart from shapes; an error says where not.
    pub fn build_plan(
        &self,
        counts: RangeInclusive<usize>,
        mut record: impl FnMut(usize) -> Result<(), String>,
    ) -> Result<DispatchPlan, String> {
        let (first, last) = (*counts.start(), *counts.end());
        if first > last {
            return Err(format!("no count in {first}..={last}"));
        }
        if !self
            .downlevel
            .flags
            .contains(wgpu::DownlevelFlags::INDIRECT_EXECUTION)
        {
            return Err("the adapter has no indirect dispatch".into());
        }
        // Sites are found on a few counts that cover every residue mod 4 (vec4 forms) and both
        // ends, then checked on all.
        let mut sample: BTreeSet<usize> = (first..=last.min(first + 3)).collect();
        sample.extend([last, last.saturating_sub(1).max(first), (first + last) / 2]);
        let started = super::recorder::web_time_now();
        let mut forced = HashMap::new();
        let mut all = false;
        for _round in 0..16 {
            let counts: Vec<usize> = if all {
                (first..=last).collect()
            } else {
                sample.iter().copied().collect()
            };
            let mut logs = BTreeMap::new();
            for &k in &counts {
                let (result, events) = self.dry_run(&forced, || record(k));
                result?;
                logs.insert(k, events);
            }
            let reference = &logs[&last];
            let mut varying = BTreeMap::new();
            for (&k, events) in &logs {
                for site in varying_sites(reference, events)? {
                    varying.entry(site).or_insert(k);
                }
            }
            if varying.is_empty() {
                if all {
                    let mut plan = self.plan_from(&logs, first..=last, forced)?;
                    plan.build_seconds = super::recorder::web_time_now() - started;
                    return Ok(plan);
                }
                all = true;
                continue;
            }
            let mut stuck = None;
            for (&site, &k) in &varying {
                let level = forced.entry(site).or_insert(0);
                match *level < MAX_FORCE {
                    true => *level += 1,
                    false => stuck = Some((site, k)),
                }
            }
            if let Some((site, k)) = stuck {
                let kernels = |events: &[PlanEvent]| site_kernels(events).remove(&site);
                return Err(format!(
                    "after choice site {site} the kernels differ with the count: {:?} at {k}, \
                     {:?} at {last}",
                    kernels(&logs[&k]).unwrap_or_default(),
                    kernels(reference).unwrap_or_default()
                ));
            }
        }
        Err("choice sites did not settle".into())
    }

    /// The plan of settled dry runs `logs` (one per count, the same events but for the
    /// params and grids of dispatches).
    fn plan_from(
        &self,
        logs: &BTreeMap<usize, Vec<PlanEvent>>,
        counts: RangeInclusive<usize>,
        forced: HashMap<usize, u8>,
    ) -> Result<DispatchPlan, String> {
        let reference = &logs[counts.end()];
        for (k, events) in logs {
            if events.len() != reference.len() {
                return Err(format!(
                    "{} recorded events at count {k}, {} at count {}",
                    events.len(),
                    reference.len(),
                    counts.end()
                ));
            }
        }
        let mut dispatches = Vec::new();
        // Per dynamic dispatch: its event index and params words.
        let mut dynamic: Vec<(usize, usize)> = Vec::new();
        for (at, event) in reference.iter().enumerate() {
            let same = logs.values().all(|events| &events[at] == event);
            match event {
                PlanEvent::Dispatch { kernel, params, .. } => {
                    let same_kernel = logs.values().all(|events| {
                        matches!(&events[at], PlanEvent::Dispatch { kernel: other, .. }
                            if other == kernel)
                    });
                    if !same_kernel {
                        return Err(format!("dispatch {at} ({kernel}) changes with the count"));
                    }
                    let entry = (!same).then(|| {
                        dynamic.push((at, params.len()));
                        dynamic.len() - 1
                    });
                    dispatches.push(PlannedDispatch {
                        kernel: kernel.clone(),
                        dynamic: entry,
                    });
                }
                PlanEvent::Clear => {}
                other if !same => {
                    return Err(format!("{other:?} changes with the count"));
                }
                _ => {}
            }
        }
        let row_words: usize = dynamic.iter().map(|&(_, words)| words + 3).sum();
        let mut table = Vec::with_capacity(row_words * logs.len());
        for events in logs.values() {
            for &(at, _) in &dynamic {
                let PlanEvent::Dispatch { params, groups, .. } = &events[at] else {
                    unreachable!("same event kinds at every count")
                };
                table.extend_from_slice(params);
                table.extend_from_slice(groups);
            }
        }
        let mut entries = Vec::with_capacity(2 * dynamic.len());
        let mut offset = 0;
        for &(_, words) in &dynamic {
            entries.extend([offset as u32, words as u32]);
            offset += words + 3;
        }
        use wgpu::BufferUsages as U;
        let upload = |data: &[u32]| {
            let buf = GpuBuf::dedicated(&self.device, data.len(), U::STORAGE | U::COPY_DST);
            if !data.is_empty() {
                self.queue
                    .write_buffer(buf.buffer(), 0, bytemuck::cast_slice(data));
            }
            buf
        };
        Ok(DispatchPlan {
            counts,
            dispatches,
            forced,
            table: upload(&table),
            entries: upload(&entries),
            params: GpuBuf::dedicated(
                &self.device,
                dynamic.len() * SLOT_WORDS,
                U::UNIFORM | U::STORAGE | U::COPY_SRC,
            ),
            indirect: GpuBuf::dedicated(
                &self.device,
                dynamic.len() * 3,
                U::INDIRECT | U::STORAGE | U::COPY_SRC,
            ),
            row_words,
            host_table: table,
            host_entries: entries,
            build_seconds: 0.0,
        })
    }

    /// Records the kernel that picks `plan`'s params and grids for the count in `count` ([1],
    /// clamped to the plan's counts), then replays `plan`: every dispatch until
    /// [`Gpu::end_plan`] must be the plan's next one.
    pub fn begin_plan(&self, plan: &Arc<DispatchPlan>, count: &GpuBuf) {
        let entries = plan.dynamic_dispatches();
        let params = Params {
            entries: entries as u32,
            row_words: plan.row_words as u32,
            first_count: *plan.counts.start() as u32,
            last_count: *plan.counts.end() as u32,
        };
        let kernel = self.kernel(&crate::shader!("dispatch_plan"), "pick");
        self.dispatch_linear(
            &kernel,
            &params,
            &[
                ("count", count),
                ("table", &plan.table),
                ("entries", &plan.entries),
                ("picked_params", &plan.params),
                ("picked_groups", &plan.indirect),
            ],
            entries,
        );
        let mut rec = self.recorder.lock().unwrap();
        assert!(
            rec.dry.is_none() && rec.active.is_none(),
            "a plan inside a plan"
        );
        rec.active = Some(ActivePlan {
            plan: plan.clone(),
            ordinal: 0,
            sites: 0,
        });
    }

    /// Ends the plan begun by [`Gpu::begin_plan`]; an error when the recording left it early.
    pub fn end_plan(&self) -> Result<(), String> {
        let active = self.recorder.lock().unwrap().active.take();
        match active {
            Some(a) if a.ordinal == a.plan.dispatches.len() => Ok(()),
            Some(a) => Err(format!(
                "the step recorded {} of its plan's {} dispatches",
                a.ordinal,
                a.plan.dispatches.len()
            )),
            None => Err("no plan was begun".into()),
        }
    }

    /// What a dispatch is to the plan machinery: logged in a dry run (nothing to record), or
    /// while a plan replays its next dispatch, checked against the kernel.
    pub(super) fn plan_dispatch(
        &self,
        kernel: &super::Kernel,
        params: &[u8],
        groups: [u32; 3],
    ) -> PlanRole {
        let mut rec = self.recorder.lock().unwrap();
        if let Some(dry) = rec.dry.as_mut() {
            let site = dry.sites.checked_sub(1).unwrap_or(usize::MAX);
            let mut words = vec![0u32; params.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..params.len()].copy_from_slice(params);
            dry.events.push(PlanEvent::Dispatch {
                kernel: kernel.name.clone(),
                params: words,
                groups,
                site,
            });
            return PlanRole::Logged;
        }
        let Some(active) = rec.active.as_mut() else {
            return PlanRole::Static;
        };
        let ordinal = active.ordinal;
        active.ordinal += 1;
        let Some(planned) = active.plan.dispatches.get(ordinal) else {
            panic!(
                "{}: the step records more dispatches than its plan ({})",
                kernel.name,
                active.plan.dispatches.len()
            );
        };
        assert_eq!(
            planned.kernel, kernel.name,
            "dispatch {ordinal} of the plan is another kernel"
        );
        match planned.dynamic {
            Some(entry) => PlanRole::Picked(active.plan.clone(), entry),
            None => PlanRole::Static,
        }
    }

    /// In a dry run: logs a non-dispatch command and returns true (nothing is recorded).
    pub(super) fn plan_event(&self, event: impl FnOnce() -> PlanEvent) -> bool {
        let mut rec = self.recorder.lock().unwrap();
        match rec.dry.as_mut() {
            Some(dry) => {
                dry.events.push(event());
                true
            }
            None => false,
        }
    }
}

/// The choice sites whose kernels differ between two dry runs, or an error when the runs
/// differ in a way no site explains (another number of sites).
fn varying_sites(reference: &[PlanEvent], events: &[PlanEvent]) -> Result<Vec<usize>, String> {
    let (a, b) = (site_kernels(reference), site_kernels(events));
    let sites: BTreeSet<usize> = a.keys().chain(b.keys()).copied().collect();
    let varying: Vec<usize> = sites.into_iter().filter(|s| a.get(s) != b.get(s)).collect();
    if varying.contains(&usize::MAX) {
        return Err("kernels before the first choice site depend on the count".into());
    }
    Ok(varying)
}

impl PlanEvent {
    pub(super) fn write(bytes: &[u8]) -> PlanEvent {
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        PlanEvent::Write {
            len: bytes.len(),
            hash,
        }
    }
}

/// The kernels dispatched after each choice site, in order.
fn site_kernels(events: &[PlanEvent]) -> BTreeMap<usize, Vec<String>> {
    let mut sites: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for event in events {
        if let PlanEvent::Dispatch { kernel, site, .. } = event {
            sites.entry(*site).or_default().push(kernel.clone());
        }
    }
    sites
}

/// CPU twin of `shaders/dispatch_plan.wgsl`'s `pick`: the params slots and grids of `count`.
pub mod cpu {
    use super::SLOT_WORDS;

    pub fn pick(
        table: &[u32],
        entries: &[u32],
        row_words: usize,
        counts: (usize, usize),
        count: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        let dynamic = entries.len() / 2;
        let row = (count.clamp(counts.0, counts.1) - counts.0) * row_words;
        let mut params = vec![0; dynamic * SLOT_WORDS];
        let mut groups = vec![0; dynamic * 3];
        for j in 0..dynamic {
            let (at, words) = (row + entries[2 * j] as usize, entries[2 * j + 1] as usize);
            params[j * SLOT_WORDS..j * SLOT_WORDS + words].copy_from_slice(&table[at..at + words]);
            groups[j * 3..j * 3 + 3].copy_from_slice(&table[at + words..at + words + 3]);
        }
        (params, groups)
    }
}
