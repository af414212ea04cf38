//! The processes of a data-parallel run and the collectives a step needs (issue 14). One process
//! is [`OneProcess`]; under `mpirun` or Slurm's `srun` with the `mpi` feature, [`MpiRanks`] over
//! the system MPI. Each rank holds a full replica and its own adapter; the step (train/step.rs)
//! all-gathers features and all-reduces the flat gradients through this trait, so the model code
//! never sees MPI.
//!
//! Collectives run on host memory: the features and gradients are read from the adapter, sent,
//! and written back (no GPU-direct transport in wgpu). Every rank calls the same collectives in the
//! same order; a rank that stops calls [`Ranks::abort`] so the others do not wait forever.

/// Seconds a rank spent in collectives since the last [`Ranks::take_times`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommTimes {
    /// All-gathers of features (and the exchange of their gradients under --gather-with-grad).
    pub gather: f64,
    /// All-reduces of the flat gradients.
    pub reduce: f64,
}

pub trait Ranks {
    /// This process, 0-based.
    fn rank(&self) -> usize;
    /// Processes in the run.
    fn size(&self) -> usize;
    /// This process among those on its machine (picks its adapter).
    fn local_rank(&self) -> usize;
    /// Every rank's `local` (the same length on all) concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Vec<f32>;
    /// The element-wise sum over ranks, in place; every rank gets the same bits.
    fn all_reduce_sum(&self, values: &mut [f32]);
    /// The smallest `value` of any rank.
    fn all_reduce_min(&self, value: u64) -> u64;
    /// Every rank's bytes, in rank order (start-up checks).
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>>;
    /// Waits for every rank, sleeping rather than spinning (a rank that waits long must not
    /// take a core from one that computes: `bench step` times one rank alone this way).
    fn barrier(&self);
    /// Ends every rank of the run (after an error on this one) with exit code `code`.
    fn abort(&self, code: i32) -> !;
    /// Collective time since the last call.
    fn take_times(&self) -> CommTimes;
}

/// A run of one process: every collective is the identity.
#[derive(Default)]
pub struct OneProcess;

impl Ranks for OneProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_gather(&self, local: &[f32]) -> Vec<f32> {
        local.to_vec()
    }
    fn all_reduce_sum(&self, _values: &mut [f32]) {}
    fn all_reduce_min(&self, value: u64) -> u64 {
        value
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        vec![local.to_vec()]
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn take_times(&self) -> CommTimes {
        CommTimes::default()
    }
}

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI): only
/// then is MPI initialised, so a plain `clusterclip train` behaves as a one-process run.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some())
}

#[cfg(feature = "mpi")]
pub use mpi_ranks::MpiRanks;

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::{CommTimes, Ranks};
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::cell::Cell;
    use std::time::Instant;

    /// Adds the seconds `f` takes to `slot`.
    fn timed<T>(slot: &Cell<f64>, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        slot.set(slot.get() + started.elapsed().as_secs_f64());
        out
    }

    /// The world of an MPI launch. MPI is finalised when this is dropped.
    pub struct MpiRanks {
        world: SimpleCommunicator,
        local_rank: usize,
        gather: Cell<f64>,
        reduce: Cell<f64>,
        // Last: dropped after the communicator.
        _universe: Universe,
    }

    impl MpiRanks {
        /// Initialises MPI (funnelled: only the main thread calls it; the data threads never do).
        pub fn init() -> Result<MpiRanks, String> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or("MPI was already initialised")?;
            let world = universe.world();
            // The ranks sharing this machine's memory, in world order: the local rank.
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            Ok(MpiRanks {
                world,
                local_rank,
                gather: Cell::new(0.0),
                reduce: Cell::new(0.0),
                _universe: universe,
            })
        }
    }

    impl Ranks for MpiRanks {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn all_gather(&self, local: &[f32]) -> Vec<f32> {
            timed(&self.gather, || {
                let mut all = vec![0f32; local.len() * self.size()];
                self.world.all_gather_into(local, &mut all[..]);
                all
            })
        }
        fn all_reduce_sum(&self, values: &mut [f32]) {
            timed(&self.reduce, || {
                let send = values.to_vec();
                self.world
                    .all_reduce_into(&send[..], values, SystemOperation::sum());
            })
        }
        fn all_reduce_min(&self, value: u64) -> u64 {
            let mut min = value;
            self.world
                .all_reduce_into(&value, &mut min, SystemOperation::min());
            min
        }
        fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
            let mut lengths = vec![0i32; self.size()];
            self.world
                .all_gather_into(&(local.len() as i32), &mut lengths[..]);
            let displs: Vec<i32> = lengths
                .iter()
                .scan(0, |at, &n| {
                    let start = *at;
                    *at += n;
                    Some(start)
                })
                .collect();
            let mut all = vec![0u8; lengths.iter().sum::<i32>() as usize];
            if all.is_empty() {
                // Nothing to send (MPI refuses empty buffers' dangling pointers).
                return vec![Vec::new(); self.size()];
            }
            {
                let mut parts = PartitionMut::new(&mut all[..], &lengths[..], &displs[..]);
                self.world.all_gather_varcount_into(local, &mut parts);
            }
            displs
                .iter()
                .zip(&lengths)
                .map(|(&d, &n)| all[d as usize..(d + n) as usize].to_vec())
                .collect()
        }
        fn barrier(&self) {
            let mut request = self.world.immediate_barrier();
            loop {
                match request.test() {
                    Ok(_) => return,
                    Err(pending) => request = pending,
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn take_times(&self) -> CommTimes {
            CommTimes {
                gather: self.gather.replace(0.0),
                reduce: self.reduce.replace(0.0),
            }
        }
    }
}

/// The ranks of this process: MPI's world when built with `mpi` and started by a launcher,
/// else one process. An MPI launch without the feature is refused when it has several ranks
/// (each would train alone and write the same run folder).
pub fn ranks_of_launch() -> Result<Box<dyn Ranks>, String> {
    if !launched_by_mpi() {
        return Ok(Box::new(OneProcess));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(MpiRanks::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .iter()
            .find_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
            .unwrap_or(1);
        if size > 1 {
            return Err(format!(
                "started by an MPI launcher with {size} ranks, but this clusterclip was built \
                 without MPI: rebuild with `cargo build --release --features mpi`"
            ));
        }
        Ok(Box::new(OneProcess))
    }
}
