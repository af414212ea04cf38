//! The training batches as a resumable stream: a position (pass, samples into the pass) says
//! exactly which batch comes next. `builtin:shapes` is random access by index, so it starts
//! anywhere at once (worker threads render whole batches, delivered in order); other sources
//! go through the data loader, one seeded pass after another (the partial last batch of a pass
//! is dropped, as OpenCLIP's drop_last), skipping to the position on resume.
//!
//! With several ranks each stream delivers its rank's part of every global batch
//! (`LoaderConfig::share`), and the position counts the samples of all ranks, so a checkpoint
//! resumes on any number of ranks with the same global batch.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::data::builtin::shape_sample;
use crate::data::loader::{DataStats, Loader, LoaderConfig, open_loader};
use crate::data::records::SampleShape;
use crate::data::spec::{BuiltinSplit, DataSource, DatasetType, resolve_spec};

/// One training batch: images [n, 3, S, S] normalised, tokens [n, context].
pub struct TrainBatch {
    pub images: Vec<f32>,
    pub tokens: Vec<u32>,
}

enum Source {
    /// Worker `w` renders batches w, w + W, ... from `start`; read round-robin.
    Builtin {
        workers: Vec<(Receiver<TrainBatch>, JoinHandle<()>)>,
        next_worker: usize,
    },
    Loader {
        loader: Box<Loader>,
        config: Box<LoaderConfig>,
    },
}

pub struct TrainStream {
    source: Source,
    batch_size: usize,
    /// Samples of one batch over all ranks (`batch_size` × ranks).
    global_batch: usize,
    /// Pass over a finite set (always 0 for the endless built-in stream).
    pub pass: u64,
    /// Samples of this pass already delivered.
    pub position: u64,
    /// Seconds spent waiting for batches.
    pub wait_seconds: f64,
    /// Records read since the last [`TrainStream::take_data_stats`], less those of the open
    /// loader (which counts its own).
    recent: DataStats,
}

impl TrainStream {
    /// The stream of `config` (training order, seeded) at (`pass`, `position`).
    pub fn open(config: &LoaderConfig, pass: u64, position: u64) -> Result<TrainStream, String> {
        let batch_size = config.batch_size;
        let global_batch = batch_size * config.share.ranks.max(1);
        let source = resolve_spec(&config.spec, config.dataset_type)
            .map_err(|e| format!("--train-data: {e}"))?;
        let source = match source {
            DataSource::Builtin(BuiltinSplit::ShapesTrain) => builtin_source(config, position),
            _ => {
                let mut loader_config = config.clone();
                loader_config.seed = config.seed.wrapping_add(pass);
                let mut loader =
                    open_loader(&loader_config).map_err(|e| format!("--train-data: {e}"))?;
                for _ in 0..position / global_batch as u64 {
                    loader
                        .next_batch()
                        .map_err(|e| format!("--train-data: {e}"))?;
                }
                // Records skipped to reach the position were counted in the run resumed.
                loader.take_recent_stats();
                Source::Loader {
                    loader: Box::new(loader),
                    config: Box::new(config.clone()),
                }
            }
        };
        Ok(TrainStream {
            source,
            batch_size,
            global_batch,
            pass,
            position,
            wait_seconds: 0.0,
            recent: DataStats::default(),
        })
    }

    /// The next full batch.
    pub fn next_batch(&mut self) -> Result<TrainBatch, String> {
        let started = Instant::now();
        let batch = match &mut self.source {
            Source::Builtin {
                workers,
                next_worker,
            } => {
                let (receiver, _) = &workers[*next_worker];
                *next_worker = (*next_worker + 1) % workers.len();
                self.recent.samples += self.batch_size as u64;
                receiver
                    .recv()
                    .map_err(|_| "builtin:shapes worker stopped".to_string())?
            }
            Source::Loader { loader, config } => {
                let mut fresh_pass = self.position == 0;
                loop {
                    match loader
                        .next_batch()
                        .map_err(|e| format!("--train-data: {e}"))?
                    {
                        Some(b) if b.n == self.batch_size => {
                            break TrainBatch {
                                images: b.images,
                                tokens: b.tokens,
                            };
                        }
                        _ if fresh_pass => {
                            return Err(format!(
                                "--train-data {}: fewer samples than one batch of {}",
                                config.spec, self.batch_size
                            ));
                        }
                        _ => {
                            self.pass += 1;
                            self.position = 0;
                            fresh_pass = true;
                            let mut next = config.clone();
                            next.seed = config.seed.wrapping_add(self.pass);
                            self.recent.merge(&loader.take_recent_stats());
                            **loader =
                                open_loader(&next).map_err(|e| format!("--train-data: {e}"))?;
                        }
                    }
                }
            }
        };
        self.position += self.global_batch as u64;
        self.wait_seconds += started.elapsed().as_secs_f64();
        Ok(batch)
    }

    /// Records read (good and bad) since the last call, across passes.
    pub fn take_data_stats(&mut self) -> DataStats {
        let mut stats = std::mem::take(&mut self.recent);
        if let Source::Loader { loader, .. } = &mut self.source {
            stats.merge(&loader.take_recent_stats());
        }
        stats
    }
}

fn builtin_source(config: &LoaderConfig, start: u64) -> Source {
    let shape = SampleShape {
        image_size: config.image_size,
        context_length: config.context_length,
        vocab_size: config.vocab_size,
        train: true,
        seed: config.seed,
        normalisation: config.normalisation,
    };
    let count = config.workers.max(1);
    let batch = config.batch_size as u64;
    let (global, offset) = (
        batch * config.share.ranks.max(1) as u64,
        batch * config.share.rank as u64,
    );
    let workers = (0..count)
        .map(|w| {
            let (sender, receiver) = sync_channel::<TrainBatch>(2);
            let handle = std::thread::spawn(move || {
                for b in (w as u64..).step_by(count) {
                    let first = start + b * global + offset;
                    let mut images = Vec::with_capacity(
                        batch as usize * 3 * shape.image_size * shape.image_size,
                    );
                    let mut tokens = Vec::with_capacity(batch as usize * shape.context_length);
                    for index in first..first + batch {
                        let sample = shape_sample(BuiltinSplit::ShapesTrain, index, &shape);
                        images.extend(sample.image);
                        tokens.extend(sample.tokens);
                    }
                    if sender.send(TrainBatch { images, tokens }).is_err() {
                        return;
                    }
                }
            });
            (receiver, handle)
        })
        .collect();
    Source::Builtin {
        workers,
        next_worker: 0,
    }
}

impl Drop for TrainStream {
    fn drop(&mut self) {
        if let Source::Builtin { workers, .. } = &mut self.source {
            // Dropping a receiver makes its worker's next send fail, which ends the worker.
            for (receiver, handle) in workers.drain(..) {
                drop(receiver);
                let _ = handle.join();
            }
        }
    }
}

/// Whether `spec` names the endless built-in training stream.
pub fn is_builtin_train(spec: &str) -> bool {
    matches!(
        resolve_spec(spec, DatasetType::Auto),
        Ok(DataSource::Builtin(BuiltinSplit::ShapesTrain))
    )
}
