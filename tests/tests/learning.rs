//! Acceptance tests of the learning core: model shapes, checkpoint round trip, the factorized
//! log-sum-exp, the CQL loss against a hand computation, conservatism on a tiny MDP, behaviour
//! cloning of a deterministic policy, same seed → same metrics, and the gate check. Small and deterministic: one
//! shared pretrained 1,000-item world, the whole file in about ten seconds on two cores.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo test -p irec-tests --test learning`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor, Var, D};
use irec_learn::algo::bc::{BcConfig, BehaviourCloning};
use irec_learn::algo::cql::{cql_sac, off_policy_sac, CqlConfig};
use irec_model::head_losses::{critic_terms, TdForm};
use irec_learn::algo::dataset::PreparedSession;
use irec_learn::algo::pretrain::{pretrain, PretrainConfig, PretrainReport};
use irec_learn::algo::sac::{ActorLoss, DiscreteSac, Rows, SacConfig, SacNets};
use irec_learn::algo::{fit, OfflineAlgorithm, OptimConfig, PerceptionWeights, SessionDataset, TrainLog};
use irec_world::catalog::{FeatureConfig, GeneratorConfig, Schema, NUM_ATTRS};
use irec_protocol::experience::ExperienceSession;
use irec_learn::experiment::Lab;
use irec_world::metrics::Metrics;
use irec_model::attrnet::{AttrNet, AttrNetConfig};
use irec_model::heads::{HeadsConfig, MultiHead};
use irec_model::kernels::seg_logsumexp;
use irec_model::params::ParamStore;
use irec_model::text_encoder::{TextEncoder, TextEncoderConfig};
use irec_model::tracker::{StateTracker, TrackerConfig};
use irec_model::{rollout, Acting, ModelConfig, ModelError, NeuralPolicy, PolicyModel};
use irec_world::sim::SessionSpec;
use irec_world::policy::{evaluate, run_session, TrackerPolicy};
use irec_world::rng;
use irec_world::sim::{Transcript, World, WorldConfig};
use rand::Rng as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CPU: Device = Device::Cpu;
/// The reference schema's action heads: each attribute's values plus "no preference".
const REFERENCE_HEADS: [usize; NUM_ATTRS] = [5, 22, 8, 20, 5, 20];

fn tiny_world(items: usize, seed: u64) -> Arc<World> {
    let cfg = WorldConfig {
        catalog: GeneratorConfig { items, seed },
        features: FeatureConfig { seed, ..FeatureConfig::default() },
        ..WorldConfig::default()
    };
    Arc::new(World::build(&cfg).expect("a generated world always builds"))
}

/// Pretraining at a fraction of the paper's recipe: enough for the text encoder to tell the
/// requested values apart on the template sentences, in a few seconds.
fn tiny_pretrain() -> PretrainConfig {
    PretrainConfig { sentences: 3_000, heldout_template_sentences: 300, text_epochs: 3, attr_epochs: 6, ..PretrainConfig::default() }
}

/// A small world with its pretrained perception, shared by the tests that need one.
struct Fixture {
    world: Arc<World>,
    perception: PerceptionWeights,
    lab: Lab,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let started = Instant::now();
        let world = tiny_world(1_000, 11);
        let (perception, report) = pretrain(&world, &tiny_pretrain(), &CPU).unwrap();
        let lab = Lab::from_perception(world.clone(), perception.clone(), report.clone(), &CPU).unwrap();
        eprintln!("fixture: pretraining and lab in {:.1}s; {report:?}", started.elapsed().as_secs_f64());
        Fixture { world, perception, lab }
    })
}

/// Sessions of the rule-based tracker (a deterministic policy) on the lab's train split.
fn tracker_sessions(lab: &Lab, sessions: usize, seed: u64) -> Vec<Transcript> {
    let lexicon = Arc::new(lab.world.lexicon.clone());
    let index = Arc::new(lab.collect_env.index.clone());
    evaluate(&lab.collect_env, || TrackerPolicy::new(lexicon.clone(), index.clone()), sessions, seed, 1)
}

fn dataset_of(lab: &Lab, transcripts: &[Transcript]) -> SessionDataset {
    let sessions: Vec<ExperienceSession> = transcripts.iter().map(|t| ExperienceSession::from_transcript(t, 0)).collect();
    SessionDataset::new(&sessions, &lab.featurizer, lab.heads()).unwrap()
}

fn host2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Deterministic pseudo-random values in [-scale, scale].
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = rng::rng(seed);
    (0..n).map(|_| r.random_range(-scale..=scale)).collect()
}

fn close(a: f64, b: f64, what: &str) {
    let tol = 1e-4 * (1.0 + a.abs().max(b.abs()));
    assert!((a - b).abs() <= tol, "{what}: got {a}, expected {b}");
}

// ---------------------------------------------------------------------------------------------
// 1. Model shapes
// ---------------------------------------------------------------------------------------------

#[test]
fn model_shapes() {
    let schema = Schema::reference();
    assert_eq!(schema.head_sizes(), REFERENCE_HEADS);
    let store = ParamStore::new(3, &CPU);
    let vb = store.builder();

    // Text encoder: (B, T) token ids → (B, 32).
    let text_cfg = TextEncoderConfig { vocab: 40, ..TextEncoderConfig::default() };
    let text = TextEncoder::new(&text_cfg, vb.pp("text")).unwrap();
    let ids: Vec<Vec<u32>> = vec![vec![2, 5, 7], vec![3], vec![9, 9, 9, 9, 12]];
    let (tokens, mask) = irec_model::text_encoder::pack(&ids, &CPU).unwrap();
    assert_eq!(tokens.dims(), &[3, 5]);
    assert_eq!(text.forward(&tokens, &mask).unwrap().dims(), &[3, 32]);

    // AttrNet: (N, 64) visual features → (N, Σ values) logits and probabilities.
    let mut attr_values = [0; NUM_ATTRS];
    for (v, h) in attr_values.iter_mut().zip(REFERENCE_HEADS) {
        *v = h - 1;
    }
    let attr_cfg = AttrNetConfig { input: 64, values: attr_values, ..AttrNetConfig::default() };
    let attrnet = AttrNet::new(&attr_cfg, vb.pp("attrnet")).unwrap();
    let x = Tensor::from_vec(values(7 * 64, 1, 1.0), (7, 64), &CPU).unwrap();
    let sum_values: usize = attr_values.iter().sum();
    assert_eq!(sum_values, 74);
    assert_eq!(attrnet.forward(&x).unwrap().dims(), &[7, sum_values]);
    let p = host2(&attrnet.probabilities(&x).unwrap());
    assert!(p.iter().flatten().all(|v| (0.0..=1.0).contains(v)));

    // The paper's sizes for the reference schema.
    let model = ModelConfig::paper(text_cfg.clone(), attr_cfg.clone(), &REFERENCE_HEADS);
    let f = 32 + 64 + sum_values;
    assert_eq!(model.tracker, TrackerConfig { input: f, hidden: 128, memory: None });
    assert_eq!(model.heads, REFERENCE_HEADS.to_vec());

    // State tracker: (T, B, F) → (T + 1, B, 128), row 0 the zero state.
    let tracker = StateTracker::new(&model.tracker, vb.pp("tracker")).unwrap();
    let (t, b) = (4, 3);
    let feats = Tensor::from_vec(values(t * b * f, 2, 1.0), (t, b, f), &CPU).unwrap();
    let states = tracker.unroll(&feats).unwrap();
    assert_eq!(states.dims(), &[t + 1, b, 128]);
    assert!(states.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| *v == 0.0));
    assert!(states.get(t).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let stepwise = tracker.unroll_stepwise(&feats).unwrap();
    let diff = (&states - &stepwise).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "fused and stepwise unrolls differ by {diff}");

    // Policy and factorized Q heads: (N, 128) → (N, Σ heads) = (N, 80).
    let width: usize = REFERENCE_HEADS.iter().sum();
    assert_eq!(width, 80);
    let s = states.reshape(((t + 1) * b, 128)).unwrap();
    for (name, cfg) in [("policy", &model.policy), ("q", &model.q)] {
        assert_eq!(cfg.heads, REFERENCE_HEADS.to_vec());
        let head = MultiHead::new(cfg, vb.pp(name)).unwrap();
        assert_eq!(head.forward(&s).unwrap().dims(), &[(t + 1) * b, width], "{name}");
    }
    assert_eq!(model.policy.hidden, vec![128]);
    assert_eq!(model.q.hidden, vec![32, 32]);

    // A pretrained perception of a generated (reference-schema) world has the same heads.
    let fx = fixture();
    assert_eq!(fx.perception.config.heads, REFERENCE_HEADS.to_vec());
    assert_eq!(fx.perception.config.tracker.input, fx.lab.featurizer.width());
    assert_eq!(fx.lab.featurizer.width(), f + sum_values + 1, "the text classifier's probabilities join the turn feature");
    let emb = fx.perception.perception.encode_texts(&["I want boots", "Good"]).unwrap();
    // The embedding, then the kept classifier's probabilities over every (attribute, value) and "Good".
    let text = &fx.perception.config.text;
    assert_eq!((text.out, text.classes), (32, sum_values + 1));
    assert_eq!(emb.dims(), &[2, text.out + text.classes]);
    let probs = host2(&emb.narrow(1, text.out, text.classes).unwrap());
    for row in &probs {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    let argmax = |r: &[f32]| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0);
    assert_eq!(argmax(&probs[0]), 1, "\"I want boots\" is Category value 1");
    assert_eq!(argmax(&probs[1]), sum_values, "\"Good\" is the last class");
    // The request memory sits beside the GRU and the heads copy from it.
    let memory = fx.perception.config.tracker.memory.clone().unwrap();
    assert_eq!((memory.offset, memory.classes), (32, sum_values + 1));
    assert_eq!(fx.perception.config.policy.input, 128 + sum_values + 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Checkpoint round trip
// ---------------------------------------------------------------------------------------------

#[test]
fn checkpoint_round_trip_gives_identical_actions() {
    let fx = fixture();
    let lab = &fx.lab;
    // A recommender that acts non-trivially: a few behaviour-cloning steps on tracker sessions.
    let data = dataset_of(lab, &tracker_sessions(lab, 60, 41));
    let mut bc = BehaviourCloning::new(&fx.perception, 5, &BcConfig::default()).unwrap();
    fit(&mut bc, &data, 25, 16, 25, &mut rng::rng(6), |_| {}).unwrap();
    let rec = bc.recommender();

    let bytes = rec.export("bc", bc.steps()).to_bytes().unwrap();
    let model = PolicyModel::from_bytes(&bytes, &CPU).unwrap();
    assert_eq!(model.meta.label, "bc");
    assert_eq!(model.meta.steps, 25);
    assert_eq!(model.heads(), lab.heads());
    // The blob decodes and re-encodes to the very same bytes (names, shapes, values, metadata).
    let again = irec_model::Checkpoint {
        meta: model.meta.clone(),
        tensors: irec_model::Checkpoint::from_bytes(&bytes, &CPU).unwrap().tensors,
    };
    assert_eq!(again.to_bytes().unwrap(), bytes);

    // The rebuilt model brings its own perception: features from it, not from the original.
    let featurizer = Arc::new(irec_model::Featurizer::new(model.perception.clone(), &fx.world.features).unwrap());
    let env = &lab.eval_env;
    let seed = 77;
    let specs: Vec<SessionSpec> = (0..24).map(|i| SessionSpec::numbered(env, seed, i)).collect();
    let noisy = Acting { noise_sigma: 0.7, bias: values(lab.heads().iter().sum(), 9, 0.5), sample: false };
    for acting in [Acting::greedy(), noisy, Acting { sample: true, ..Acting::default() }] {
        let a = rollout(env, &rec.tracker, &rec.policy, &lab.featurizer, lab.heads(), &specs, &acting).unwrap();
        let b = rollout(env, &model.tracker, &model.policy, &featurizer, model.heads(), &specs, &acting).unwrap();
        assert_eq!(a, b, "rollouts differ for {acting:?}");
        if acting == Acting::greedy() {
            // The test means something only if the policy asks for values.
            let asked = a.iter().flat_map(|t| &t.turns).filter(|t| t.action.0.iter().any(|s| *s != 0)).count();
            assert!(asked > 0, "the cloned policy never asks for a value");

            // One session at a time (a device) agrees with the batched rollout.
            let model = Arc::new(model.clone());
            let mut device = NeuralPolicy::new(model.clone(), featurizer.clone(), Acting::greedy());
            for (i, t) in a.iter().enumerate() {
                let one = run_session(env, &mut device, seed, i as u64);
                assert_eq!(&one, t, "session {i}: device and rollout disagree");
            }
        }
    }
}

#[test]
fn a_world_file_shares_its_perceptions_probabilities_and_refuses_to_serve_another() {
    use irec_model::loader::LoadedNeural;
    use irec_world::world_file::{self, WorldFile, WorldFingerprint};
    let fx = fixture();
    let rec = irec_learn::algo::Recommender::new(&fx.perception, 3, None).unwrap();
    let blob = rec.export("fresh", 0).to_bytes().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("world.irecw");
    let fp = WorldFingerprint([9; 32]);
    world_file::write(&path, &fx.world, fp, &[fx.lab.featurizer.world_file_section()]).unwrap();
    let file = WorldFile::open(&path).unwrap();
    let world = file.world().unwrap();
    let table = file.table::<f32>(irec_model::perception::PROBABILITIES_SECTION).unwrap();

    let shared = LoadedNeural::from_bytes_sharing(&blob, &world, Some(&table)).unwrap();
    let own = LoadedNeural::from_bytes(&blob, &fx.world).unwrap();
    assert!(shared.featurizer().shares_probabilities() && !own.featurizer().shares_probabilities());
    assert_eq!(shared.featurizer().probabilities(), own.featurizer().probabilities());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (item, said) in [(0, "I want boots"), (417, "Good"), (999, "Do you have shoes with zipper")] {
        shared.featurizer().push_turn(item, said, &mut a).unwrap();
        own.featurizer().push_turn(item, said, &mut b).unwrap();
    }
    assert_eq!(a, b, "turn features from the mapped world differ");

    // Probabilities of another perception (here: perturbed) are noticed and recomputed.
    let other: Vec<f32> = fx.lab.featurizer.probabilities().iter().map(|p| p * 0.9).collect();
    let other_path = dir.path().join("other.irecw");
    world_file::write(&other_path, &fx.world, fp, &[world_file::ExtraSection { name: irec_model::perception::PROBABILITIES_SECTION, bytes: bytemuck::cast_slice(&other) }]).unwrap();
    let other_file = WorldFile::open(&other_path).unwrap();
    let other_table = other_file.table::<f32>(irec_model::perception::PROBABILITIES_SECTION).unwrap();
    let refused = LoadedNeural::from_bytes_sharing(&blob, &world, Some(&other_table)).unwrap();
    assert!(!refused.featurizer().shares_probabilities());
    assert_eq!(refused.featurizer().probabilities(), own.featurizer().probabilities());
}

#[test]
fn corrupt_checkpoints_are_errors_not_panics() {
    let fx = fixture();
    let rec = irec_learn::algo::Recommender::new(&fx.perception, 3, None).unwrap();
    let bytes = rec.export("fresh", 0).to_bytes().unwrap();
    assert!(PolicyModel::from_bytes(&bytes, &CPU).is_ok());
    let load = |b: &[u8]| std::panic::catch_unwind(|| PolicyModel::from_bytes(b, &CPU).map(|_| ())).expect("loading panicked");

    assert!(matches!(load(&[]), Err(ModelError::Truncated)));
    assert!(matches!(load(&bytes[..15]), Err(ModelError::Truncated)));
    let mut wrong = bytes.clone();
    wrong[..8].copy_from_slice(b"NOTCKPT!");
    assert!(matches!(load(&wrong), Err(ModelError::BadMagic)));
    let mut version = bytes.clone();
    version[8..12].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(load(&version), Err(ModelError::UnsupportedFormat(99))));
    let mut long_meta = bytes.clone();
    long_meta[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(load(&long_meta), Err(ModelError::Truncated)));
    let meta_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let mut garbled = bytes.clone();
    garbled[16] = b'#';
    assert!(matches!(load(&garbled), Err(ModelError::Metadata(_))));

    // Truncated anywhere: in the metadata, the safetensors header, or the tensor data.
    let mut cuts: Vec<usize> = (16..16 + meta_len + 64).step_by(7).collect();
    cuts.extend((0..200).map(|k| 16 + meta_len + k * (bytes.len() - 16 - meta_len) / 200));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        assert!(load(&bytes[..cut]).is_err(), "truncated at {cut} of {} bytes yet loaded", bytes.len());
    }

    // Flipped bytes in the metadata and the safetensors header: an error or a model, never a panic.
    let mut r = rng::rng(8);
    for _ in 0..300 {
        let mut b = bytes.clone();
        let at = r.random_range(8..(16 + meta_len + 400).min(b.len()));
        b[at] ^= 1 << r.random_range(0..8);
        let _ = load(&b);
    }

    // A blob without the policy's weights is an error.
    let mut ck = rec.export("fresh", 0);
    ck.tensors.retain(|k, _| !k.starts_with("policy."));
    assert!(PolicyModel::from_checkpoint(&ck, &CPU).is_err());
    assert!(load(&ck.to_bytes().unwrap()).is_err());
}

// ---------------------------------------------------------------------------------------------
// 3. The factorized log-sum-exp
// ---------------------------------------------------------------------------------------------

#[test]
fn factorized_logsumexp_equals_brute_force_enumeration() {
    let heads = [3usize, 4, 2];
    let width: usize = heads.iter().sum();
    let rows = 6;
    let q = values(rows * width, 12, 4.0);
    let q_var = Var::from_vec(q.clone(), (rows, width), &CPU).unwrap();
    let lse = seg_logsumexp(q_var.as_tensor(), &heads).unwrap();
    assert_eq!(lse.dims(), &[rows, heads.len()]);
    let joint = lse.sum(D::Minus1).unwrap();
    let got = joint.to_vec1::<f32>().unwrap();
    let grads = joint.sum_all().unwrap().backward().unwrap();
    let grad = host2(grads.get(q_var.as_tensor()).unwrap());

    for r in 0..rows {
        let row = &q[r * width..(r + 1) * width];
        // All 3·4·2 = 24 joint actions, Q(s, a) = Σ_d Q_d(s, a_d).
        let mut joint_q = Vec::new();
        let mut actions = Vec::new();
        for a0 in 0..3 {
            for a1 in 0..4 {
                for a2 in 0..2 {
                    joint_q.push(row[a0] as f64 + row[3 + a1] as f64 + row[7 + a2] as f64);
                    actions.push([a0, 3 + a1, 7 + a2]);
                }
            }
        }
        assert_eq!(joint_q.len(), 24);
        let m = joint_q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = joint_q.iter().map(|x| (x - m).exp()).sum();
        let brute = m + z.ln();
        close(got[r] as f64, brute, &format!("row {r}: log Σ_a exp Q(s, a)"));
        // Its gradient is each slot's marginal probability under softmax(Q) over joint actions.
        let mut marginal = vec![0f64; width];
        for (qa, cols) in joint_q.iter().zip(&actions) {
            for c in cols {
                marginal[*c] += (qa - brute).exp();
            }
        }
        for c in 0..width {
            close(grad[r][c] as f64, marginal[c], &format!("row {r}: gradient of slot {c}"));
        }
    }

    // The CQL penalty the critic trains with is that minus Q(s, a_data).
    let q_t = Tensor::from_vec(q.clone(), (rows, width), &CPU).unwrap();
    let data_action = [2usize, 3 + 1, 7];
    let q_sa: Vec<f32> = (0..rows).map(|r| data_action.iter().map(|c| q[r * width + c]).sum()).collect();
    let mut onehot = vec![0f32; rows * width];
    (0..rows).for_each(|r| data_action.iter().for_each(|c| onehot[r * width + c] = 1.0));
    let onehot = Tensor::from_vec(onehot, (rows, width), &CPU).unwrap();
    let y = Tensor::zeros(rows, DType::F32, &CPU).unwrap();
    let terms = critic_terms(&q_t, &onehot, &y, &heads, TdForm::Joint).unwrap();
    let (pen, fused_q_sa) = (terms.cql.to_vec1::<f32>().unwrap(), terms.q_sa.to_vec1::<f32>().unwrap());
    for r in 0..rows {
        close(fused_q_sa[r] as f64, q_sa[r] as f64, "Q(s, a_data)");
        close(pen[r] as f64, got[r] as f64 - q_sa[r] as f64, "penalty");
        assert!(pen[r] > 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The CQL loss against a hand computation
// ---------------------------------------------------------------------------------------------

/// Per-head log-softmax of one row, in plain f32.
fn log_softmax_by_hand(row: &[f32], heads: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len());
    let mut off = 0;
    for &n in heads {
        let seg = &row[off..off + n];
        let m = seg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + seg.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
        out.extend(seg.iter().map(|x| x - lse));
        off += n;
    }
    out
}

/// Σ_d logsumexp of one row's head segments, in plain f32.
fn joint_logsumexp_by_hand(row: &[f32], heads: &[usize]) -> f32 {
    let mut off = 0;
    let mut total = 0.0;
    for &n in heads {
        let seg = &row[off..off + n];
        let m = seg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        total += m + seg.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
        off += n;
    }
    total
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The default critic: every head regressed to a TD(λ) target over whole sessions, no entropy
/// bonus in the backup, against a hand computation on two sessions of three turns (time-major).
#[test]
fn per_head_lambda_targets_equal_hand_computation() {
    use irec_learn::algo::sac::CriticBackup;
    let heads = [2usize, 3];
    let width = 5;
    let (b, t, input) = (2usize, 3usize, 4usize);
    let n = b * t;
    let store = ParamStore::new(22, &CPU);
    let vb = store.builder();
    let cfg = HeadsConfig { input, hidden: vec![8], heads: heads.to_vec(), copy: None, zero_output: false };
    let [q1, q2, tq1, tq2, policy] = ["q1", "q2", "tq1", "tq2", "policy"].map(|p| MultiHead::new(&cfg, vb.pp(p)).unwrap());
    let state = |seed| Tensor::from_vec(values(n * input, seed, 2.0), (n, input), &CPU).unwrap();
    let (s, s_next, s_next_target) = (state(4), state(5), state(6));
    // Row t·2 + b. Session 0 runs three turns; session 1 ends after two (its third row is padding).
    let actions: [[usize; 2]; 6] = [[0, 2], [1, 0], [1, 1], [0, 1], [0, 0], [1, 2]];
    let rewards = [-0.1f32, -0.1, -0.1, 0.0, 0.0, 0.0];
    let not_done = [1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0];
    let mask = [1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0];
    let mut onehot = vec![0f32; n * width];
    for (r, a) in actions.iter().enumerate() {
        onehot[r * width + a[0]] = 1.0;
        onehot[r * width + 2 + a[1]] = 1.0;
    }
    let tensor = |v: &[f32]| Tensor::from_vec(v.to_vec(), v.len(), &CPU).unwrap();
    let onehot_t = Tensor::from_vec(onehot.clone(), (n, width), &CPU).unwrap();
    let (rewards_t, not_done_t, mask_t) = (tensor(&rewards), tensor(&not_done), tensor(&mask));
    let rows = Rows { onehot: &onehot_t, rewards: &rewards_t, not_done: &not_done_t, mask: &mask_t, sessions: b };
    let (gamma, lambda, alpha) = (0.9f32, 0.8f32, 0.5f32);
    let lib = SacNets {
        q1: &q1,
        q2: Some(&q2),
        target_q1: &tq1,
        target_q2: Some(&tq2),
        policy: &policy,
        heads: &heads,
        temperature: 0.3,
        gamma: gamma as f64,
        reward_scale: 1.0,
        cql_alpha: Some(alpha as f64),
        actor: ActorLoss::ForwardKl,
        backup: CriticBackup::PerHead,
        entropy_in_backup: false,
        tracker_bc: 0.0,
        td_lambda: lambda as f64,
    };
    let (q1_v, q2_v) = (host2(&q1.forward(&s).unwrap()), host2(&q2.forward(&s).unwrap()));
    let (tq1_v, tq2_v) = (host2(&tq1.forward(&s_next_target).unwrap()), host2(&tq2.forward(&s_next_target).unwrap()));
    let pi_next = host2(&policy.forward(&s_next).unwrap());
    // V(s′) = min_i (1/D)·Σ_d E_{π_d}[Q′_{i,d}(s′)]; y backwards: r + γ(1 − done)·((1 − λ)·V + λ·y_next).
    let v: Vec<f32> = (0..n)
        .map(|r| {
            let p: Vec<f32> = log_softmax_by_hand(&pi_next[r], &heads).iter().map(|x| x.exp()).collect();
            dot(&p, &tq1_v[r]).min(dot(&p, &tq2_v[r])) / heads.len() as f32
        })
        .collect();
    let mut y = [0f32; 6];
    for r in (0..n).rev() {
        let next = if not_done[r] > 0.0 && r + b < n { (1.0 - lambda) * v[r] + lambda * y[r + b] } else { v[r] };
        y[r] = rewards[r] + gamma * not_done[r] * next;
    }
    // Turn 0 of session 0 follows its session to turn 1, which follows to turn 2.
    assert!((y[0] - (rewards[0] + gamma * ((1.0 - lambda) * v[0] + lambda * y[2]))).abs() < 1e-6);
    let target = lib.compute_target(&s_next, &s_next_target, &rows).unwrap().to_vec1::<f32>().unwrap();
    for r in 0..n {
        close(target[r] as f64, y[r] as f64, &format!("TD(λ) target of row {r}"));
    }
    // Each head's own squared error: Σ_d (Q_d(s, a_d) − y)².
    let head_td = |q: &[f32], r: usize| -> f32 { (0..width).map(|c| onehot[r * width + c] * (q[c] - y[r]).powi(2)).sum() };
    let real: f32 = mask.iter().sum();
    let critic_by_hand: f32 = (0..n)
        .map(|r| {
            let oh = &onehot[r * width..(r + 1) * width];
            let pen = joint_logsumexp_by_hand(&q1_v[r], &heads) - dot(oh, &q1_v[r]) + joint_logsumexp_by_hand(&q2_v[r], &heads) - dot(oh, &q2_v[r]);
            mask[r] * (0.5 * (head_td(&q1_v[r], r) + head_td(&q2_v[r], r)) + alpha * pen)
        })
        .sum::<f32>()
        / real;
    let td_by_hand = (0..n).map(|r| mask[r] * (head_td(&q1_v[r], r) + head_td(&q2_v[r], r))).sum::<f32>() / real / (2.0 * heads.len() as f32);
    let (critic, _, losses) = lib.losses(&s, &s_next, &s_next_target, &rows).unwrap();
    close(critic.to_scalar::<f32>().unwrap() as f64, critic_by_hand as f64, "per-head CQL critic loss");
    close(losses.td as f64, td_by_hand as f64, "logged per-head TD error");
}

#[test]
fn cql_loss_equals_hand_computation() {
    let heads = [2usize, 3];
    let width = 5;
    let (n, input) = (5, 4);
    let store = ParamStore::new(21, &CPU);
    let vb = store.builder();
    let cfg = HeadsConfig { input, hidden: vec![8], heads: heads.to_vec(), copy: None, zero_output: false };
    let q1 = MultiHead::new(&cfg, vb.pp("q1")).unwrap();
    let q2 = MultiHead::new(&cfg, vb.pp("q2")).unwrap();
    let tq1 = MultiHead::new(&cfg, vb.pp("tq1")).unwrap();
    let tq2 = MultiHead::new(&cfg, vb.pp("tq2")).unwrap();
    let policy = MultiHead::new(&cfg, vb.pp("policy")).unwrap();
    let state = |seed| Tensor::from_vec(values(n * input, seed, 2.0), (n, input), &CPU).unwrap();
    let (s, s_next, s_next_target) = (state(1), state(2), state(3));

    // Five turns: the actions (slot per head), rewards, done flags; the last row is padding.
    let actions: [[usize; 2]; 5] = [[0, 2], [1, 0], [1, 1], [0, 0], [1, 2]];
    let rewards = [1.0f32, -0.5, 0.25, 2.0, 7.0];
    let not_done = [1.0f32, 1.0, 0.0, 1.0, 1.0];
    let mask = [1.0f32, 1.0, 1.0, 1.0, 0.0];
    let mut onehot = vec![0f32; n * width];
    for (r, a) in actions.iter().enumerate() {
        onehot[r * width + a[0]] = 1.0;
        onehot[r * width + 2 + a[1]] = 1.0;
    }
    let onehot_t = Tensor::from_vec(onehot.clone(), (n, width), &CPU).unwrap();
    let rewards_t = Tensor::from_vec(rewards.to_vec(), n, &CPU).unwrap();
    let not_done_t = Tensor::from_vec(not_done.to_vec(), n, &CPU).unwrap();
    let mask_t = Tensor::from_vec(mask.to_vec(), n, &CPU).unwrap();
    let rows = Rows { onehot: &onehot_t, rewards: &rewards_t, not_done: &not_done_t, mask: &mask_t, sessions: 0 };

    let (temperature, gamma, reward_scale, alpha) = (0.3f32, 0.9f32, 2.0f32, 0.7f32);
    let nets = |cql_alpha: Option<f64>, actor| SacNets {
        q1: &q1,
        q2: Some(&q2),
        target_q1: &tq1,
        target_q2: Some(&tq2),
        policy: &policy,
        heads: &heads,
        temperature: temperature as f64,
        gamma: gamma as f64,
        reward_scale: reward_scale as f64,
        cql_alpha,
        actor,
        backup: irec_learn::algo::sac::CriticBackup::Joint,
        entropy_in_backup: true,
        tracker_bc: 0.0,
        td_lambda: 0.0,
    };

    // The same networks' outputs, read back to the host: the hand computation starts from these.
    let q1_v = host2(&q1.forward(&s).unwrap());
    let q2_v = host2(&q2.forward(&s).unwrap());
    let tq1_v = host2(&tq1.forward(&s_next_target).unwrap());
    let tq2_v = host2(&tq2.forward(&s_next_target).unwrap());
    let pi_next = host2(&policy.forward(&s_next).unwrap());
    let pi_now = host2(&policy.forward(&s).unwrap());

    // By hand: y = scale·r + γ·(1 − done)·(min_i Σ_a π(a|s′)·Q′_i(s′, a) + T·H(π(·|s′))), per head.
    let mut y = [0f32; 5];
    let (mut td1, mut td2, mut pen1, mut pen2, mut q1_sa) = ([0f32; 5], [0f32; 5], [0f32; 5], [0f32; 5], [0f32; 5]);
    let (mut actor_fwd, mut actor_rev, mut entropy) = ([0f32; 5], [0f32; 5], [0f32; 5]);
    for r in 0..n {
        let logp = log_softmax_by_hand(&pi_next[r], &heads);
        let p: Vec<f32> = logp.iter().map(|x| x.exp()).collect();
        let v = dot(&p, &tq1_v[r]).min(dot(&p, &tq2_v[r])) - temperature * dot(&p, &logp);
        y[r] = reward_scale * rewards[r] + gamma * not_done[r] * v;
        let oh = &onehot[r * width..(r + 1) * width];
        q1_sa[r] = dot(oh, &q1_v[r]);
        let q2_sa = dot(oh, &q2_v[r]);
        td1[r] = (q1_sa[r] - y[r]).powi(2);
        td2[r] = (q2_sa - y[r]).powi(2);
        pen1[r] = joint_logsumexp_by_hand(&q1_v[r], &heads) - q1_sa[r];
        pen2[r] = joint_logsumexp_by_hand(&q2_v[r], &heads) - q2_sa;
        // The actor on the current states against min(Q1, Q2), slot by slot.
        let logp = log_softmax_by_hand(&pi_now[r], &heads);
        let p: Vec<f32> = logp.iter().map(|x| x.exp()).collect();
        let qmin: Vec<f32> = q1_v[r].iter().zip(&q2_v[r]).map(|(a, b)| a.min(*b)).collect();
        let scaled: Vec<f32> = qmin.iter().map(|q| q / temperature).collect();
        let soft_greedy: Vec<f32> = log_softmax_by_hand(&scaled, &heads).iter().map(|x| x.exp()).collect();
        actor_fwd[r] = -dot(&soft_greedy, &logp);
        actor_rev[r] = (0..width).map(|c| p[c] * (temperature * logp[c] - qmin[c])).sum();
        entropy[r] = -dot(&p, &logp);
    }
    let real: f32 = mask.iter().sum();
    let mean = |x: &[f32; 5]| (0..n).map(|r| mask[r] * x[r]).sum::<f32>() / real;
    let critic_rows: Vec<f32> = (0..n).map(|r| 0.5 * (td1[r] + td2[r]) + alpha * (pen1[r] + pen2[r])).collect();
    let critic_by_hand = (0..n).map(|r| mask[r] * critic_rows[r]).sum::<f32>() / real;
    let sac_critic_by_hand = (0..n).map(|r| mask[r] * 0.5 * (td1[r] + td2[r])).sum::<f32>() / real;
    // The hand-made batch is not degenerate: the penalty and the TD error both matter.
    assert!(mean(&pen1) > 0.1 && mean(&td1) > 0.1, "penalty {} td {}", mean(&pen1), mean(&td1));

    // The library's targets, losses and diagnostics.
    let lib = nets(Some(alpha as f64), ActorLoss::ForwardKl);
    let target = lib.compute_target(&s_next, &s_next_target, &rows).unwrap().to_vec1::<f32>().unwrap();
    for r in 0..n {
        close(target[r] as f64, y[r] as f64, &format!("target of row {r}"));
    }
    let (critic, actor, losses) = lib.losses(&s, &s_next, &s_next_target, &rows).unwrap();
    close(critic.to_scalar::<f32>().unwrap() as f64, critic_by_hand as f64, "CQL critic loss");
    close(losses.critic as f64, critic_by_hand as f64, "logged critic loss");
    close(losses.cql as f64, ((mean(&pen1) + mean(&pen2)) / 2.0) as f64, "logged CQL penalty");
    close(losses.td as f64, ((mean(&td1) + mean(&td2)) / 2.0) as f64, "logged TD error");
    close(losses.q_data as f64, mean(&q1_sa) as f64, "logged Q of the data");
    close(losses.entropy as f64, mean(&entropy) as f64, "logged entropy");
    close(actor.to_scalar::<f32>().unwrap() as f64, mean(&actor_fwd) as f64, "forward-KL actor loss");

    // Without the penalty: plain SAC's critic loss, and the reverse-KL actor.
    let (critic, actor, losses) = nets(None, ActorLoss::ReverseKl).losses(&s, &s_next, &s_next_target, &rows).unwrap();
    close(critic.to_scalar::<f32>().unwrap() as f64, sac_critic_by_hand as f64, "SAC critic loss");
    assert_eq!(losses.cql, 0.0);
    close(actor.to_scalar::<f32>().unwrap() as f64, mean(&actor_rev) as f64, "reverse-KL actor loss");
}

// ---------------------------------------------------------------------------------------------
// 5. Conservatism on a tiny MDP
// ---------------------------------------------------------------------------------------------

/// Slots the logged data of the tiny MDP uses on every head; all others are never seen.
const SEEN_SLOTS: usize = 2;

/// A tiny MDP: four kinds of session, three turns each, every kind with its own fixed turn
/// features. The logged behaviour uses only slots 0 and 1 of every head; the reward is 1 when
/// head 0 takes slot 1 and the final turn ends the session.
fn tiny_mdp(feature_width: usize, heads: &[usize]) -> SessionDataset {
    tiny_mdp_with(feature_width, heads, None)
}

/// The tiny MDP with head 0's rewarded slot 1 logged on about `good_share` of the sessions of
/// every kind (the first copies, so every state has the same share; turn features never depend
/// on actions), the other heads as in [`tiny_mdp`]; `None`: as logged there.
fn tiny_mdp_with(feature_width: usize, heads: &[usize], good_share: Option<f64>) -> SessionDataset {
    let kinds = 4;
    let turns = 3;
    let mut sessions = Vec::new();
    for copy in 0..16u64 {
        for kind in 0..kinds {
            let features = values(turns * feature_width, 100 + kind as u64, 1.0);
            let mut r = rng::rng(1_000 + copy * 10 + kind as u64);
            let actions: Vec<[u8; NUM_ATTRS]> = (0..turns)
                .map(|_| {
                    let mut a: [u8; NUM_ATTRS] = std::array::from_fn(|_| r.random_range(0..SEEN_SLOTS as u8));
                    if let Some(p) = good_share {
                        a[0] = u8::from((copy as f64 + 0.5) / 16.0 < p);
                    }
                    a
                })
                .collect();
            let rewards: Vec<f32> = actions.iter().map(|a| if a[0] == 1 { 1.0 } else { 0.0 }).collect();
            let dones = (0..turns).map(|t| t + 1 == turns).collect();
            sessions.push(PreparedSession { features, actions, logged_rewards: rewards.clone(), rewards, dones, success: false, round: 0 });
        }
    }
    SessionDataset::from_prepared(sessions, feature_width, heads)
}

/// Mean over real turns of Q(s, a) for the logged action and for a uniformly drawn action with
/// no seen slot on any head (by factorization, Σ_d of the mean unseen slot of head d).
fn seen_and_unseen_q(algo: &DiscreteSac, data: &SessionDataset) -> (f32, f32) {
    let idx: Vec<usize> = (0..data.len()).collect();
    let batch = data.batch(&idx, &CPU).unwrap();
    let tracker = &algo.recommender().tracker;
    let states = tracker.unroll(&batch.features).unwrap();
    let s = states.narrow(0, 0, batch.steps).unwrap().reshape((batch.steps * batch.sessions, tracker.hidden())).unwrap();
    let (q1, q2) = algo.q_values(&s).unwrap();
    let q = host2(&q1.minimum(&q2).unwrap());
    let mask = batch.mask.to_vec1::<f32>().unwrap();
    let heads = &data.heads;
    let (mut seen, mut unseen, mut rows) = (0f32, 0f32, 0f32);
    for (row, m) in mask.iter().enumerate() {
        if *m == 0.0 {
            continue;
        }
        let mut off = 0;
        for (d, &width) in heads.iter().enumerate() {
            seen += q[row][off + batch.actions[row][d] as usize];
            unseen += q[row][off + SEEN_SLOTS..off + width].iter().sum::<f32>() / (width - SEEN_SLOTS) as f32;
            off += width;
        }
        rows += 1.0;
    }
    (seen / rows, unseen / rows)
}

/// A learner rebuilt from its training state carries on exactly as the one that never stopped:
/// the same losses and the same weights after further steps (targets, temperature and Adam
/// moments are part of the state; fresh moments would take different steps).
#[test]
fn a_continued_learner_carries_on_exactly() {
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp(fx.perception.config.tracker.input, &heads);
    let cfg = SacConfig { q_hidden: Some(vec![16]), ..SacConfig::default() };
    let cql = CqlConfig { alpha: 1.0 };
    let mut a = cql_sac(&fx.perception, 9, &cfg, &cql, None).unwrap();
    let mut r = rng::rng(3);
    fit(&mut a, &data, 5, 8, 5, &mut r, |_| {}).unwrap();
    let saved = a.training_state("a").unwrap();
    let bytes = saved.to_bytes().unwrap();
    let restored = irec_model::Checkpoint::from_bytes(&bytes, &CPU).unwrap();
    let mut b = cql_sac(&fx.perception, 1234, &cfg, &cql, Some(&restored)).unwrap();
    assert_eq!(b.steps(), a.steps());
    assert!((b.temperature().unwrap() - a.temperature().unwrap()).abs() < 1e-9);
    let (mut ra, mut rb) = (rng::rng(77), rng::rng(77));
    let la = fit(&mut a, &data, 4, 8, 1, &mut ra, |_| {}).unwrap();
    let lb = fit(&mut b, &data, 4, 8, 1, &mut rb, |_| {}).unwrap();
    assert_eq!(la.iter().map(|l| l.losses.clone()).collect::<Vec<_>>(), lb.iter().map(|l| l.losses.clone()).collect::<Vec<_>>());
    let (wa, wb) = (a.training_state("a").unwrap(), b.training_state("b").unwrap());
    for (k, t) in &wa.tensors {
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(t), flat(&wb.tensors[k]), "{k} differs after continuing");
    }
}

#[test]
fn cql_is_conservative_on_unseen_actions() {
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp(fx.perception.config.tracker.input, &heads);
    let sac_cfg = SacConfig::default();
    let mut sac = off_policy_sac(&fx.perception, 4, &sac_cfg, None).unwrap();
    let mut cql = cql_sac(&fx.perception, 4, &sac_cfg, &CqlConfig { alpha: 1.0 }, None).unwrap();
    let steps = 300;
    let started = Instant::now();
    let sac_log = fit(&mut sac, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let cql_log = fit(&mut cql, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let (sac_seen, sac_unseen) = seen_and_unseen_q(&sac, &data);
    let (cql_seen, cql_unseen) = seen_and_unseen_q(&cql, &data);
    eprintln!(
        "conservatism in {:.1}s: SAC seen {sac_seen:.3} unseen {sac_unseen:.3}; CQL seen {cql_seen:.3} unseen {cql_unseen:.3}; {:?} {:?}",
        started.elapsed().as_secs_f64(),
        sac_log.last().map(|l| &l.losses),
        cql_log.last().map(|l| &l.losses)
    );
    assert!(cql_unseen < sac_unseen - 1.0, "CQL's Q of unseen actions {cql_unseen} is not below SAC's {sac_unseen}");
    assert!(cql_unseen < cql_seen - 1.0, "CQL ranks unseen actions ({cql_unseen}) near logged ones ({cql_seen})");
}

// ---------------------------------------------------------------------------------------------
// 6. Behaviour cloning of a deterministic policy
// ---------------------------------------------------------------------------------------------

/// Share of turns (all heads right) and of (turn, head) pairs on which the policy's most likely
/// slot is the logged one, under teacher forcing on the logged sessions.
fn agreement(bc: &BehaviourCloning, data: &SessionDataset) -> (f64, f64) {
    let (mut turns, mut turn_hits, mut head_hits) = (0usize, 0usize, 0usize);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(64) {
        let batch = data.batch(chunk, &CPU).unwrap();
        let (_, logits) = bc.compute_loss(&batch).unwrap();
        let logits = host2(&logits);
        let mask = batch.mask.to_vec1::<f32>().unwrap();
        for (row, m) in mask.iter().enumerate() {
            if *m == 0.0 {
                continue;
            }
            let mut off = 0;
            let mut all = true;
            for (d, &n) in data.heads.iter().enumerate() {
                let hit = argmax(&logits[row][off..off + n]) == batch.actions[row][d] as usize;
                head_hits += usize::from(hit);
                all &= hit;
                off += n;
            }
            turns += 1;
            turn_hits += usize::from(all);
        }
    }
    (turn_hits as f64 / turns as f64, head_hits as f64 / (turns * data.heads.len()) as f64)
}

#[test]
fn bc_reproduces_a_deterministic_policy() {
    let fx = fixture();
    let lab = &fx.lab;
    // The rule-based tracker is deterministic: its action is a function of what the user said so
    // far (the values named, then the catalog's most common values given those). Cloning it needs
    // the state tracker's memory, not just the last utterance.
    let seed = 51;
    let logged = tracker_sessions(lab, 300, seed);
    let data = dataset_of(lab, &logged);
    let heldout = dataset_of(lab, &tracker_sessions(lab, 100, 52));
    let cfg = BcConfig { optim: OptimConfig { lr: 2e-3, ..OptimConfig::default() } };
    let mut bc = BehaviourCloning::new(&fx.perception, 8, &cfg).unwrap();
    let started = Instant::now();
    let before = agreement(&bc, &data);
    let log = fit(&mut bc, &data, 400, 32, 100, &mut rng::rng(9), |_| {}).unwrap();
    let (turns, heads) = agreement(&bc, &data);
    let (h_turns, h_heads) = agreement(&bc, &heldout);

    // Closed loop: the clone, acting greedily on the behaviour's own sessions, says the same.
    let rec = bc.recommender();
    let specs: Vec<SessionSpec> = (0..logged.len() as u64).map(|i| SessionSpec::numbered(&lab.collect_env, seed, i)).collect();
    let replayed = rollout(&lab.collect_env, &rec.tracker, &rec.policy, &lab.featurizer, lab.heads(), &specs, &Acting::greedy()).unwrap();
    let same = logged.iter().zip(&replayed).filter(|(a, b)| a == b).count() as f64 / logged.len() as f64;
    eprintln!(
        "bc in {:.1}s on {} turns: before {before:?}; logged turns {turns:.3} (heads {heads:.3}); held out {h_turns:.3} ({h_heads:.3}); identical sessions replayed {same:.3}; {:?}",
        started.elapsed().as_secs_f64(),
        data.transitions(),
        log.last().map(|l| &l.losses)
    );
    assert!(before.0 < 0.5, "the untrained policy already agrees on {:.3} of turns: the test means nothing", before.0);
    assert!(turns >= 0.95, "BC reproduces only {turns:.3} of the behaviour's actions (all heads right)");
    assert!(same >= 0.9, "only {same:.3} of the behaviour's sessions replay identically under the clone");
    // Unseen sessions bring combinations of requested values the data never showed; the clone
    // still gets most heads right there.
    assert!(h_heads >= 0.8, "held-out per-head agreement {h_heads:.3}");
}

// ---------------------------------------------------------------------------------------------
// 7. Same seed, same metrics
// ---------------------------------------------------------------------------------------------

/// What one tiny end-to-end run produces: pretraining, behaviour data, BC and CQL training,
/// evaluation.
#[derive(Debug, PartialEq)]
struct TinyRun {
    pretrain: PretrainReport,
    bc_log: Vec<TrainLog>,
    cql_log: Vec<TrainLog>,
    bc_metrics: Metrics,
    cql_metrics: Metrics,
    checkpoint: Vec<u8>,
}

fn tiny_run(seed: u64) -> TinyRun {
    let world = tiny_world(300, 23);
    let pre = PretrainConfig { sentences: 800, heldout_template_sentences: 100, text_epochs: 1, attr_epochs: 2, seed, ..PretrainConfig::default() };
    let (perception, pretrain_report) = pretrain(&world, &pre, &CPU).unwrap();
    let lab = Lab::from_perception(world, perception.clone(), pretrain_report.clone(), &CPU).unwrap();
    let data = dataset_of(&lab, &tracker_sessions(&lab, 40, seed));
    let mut train_rng = rng::rng(rng::derive(seed, 1));
    let mut bc = BehaviourCloning::new(&perception, seed, &BcConfig::default()).unwrap();
    let bc_log = fit(&mut bc, &data, 20, 8, 5, &mut train_rng, |_| {}).unwrap();
    let mut cql = cql_sac(&perception, seed, &SacConfig::default(), &CqlConfig::default(), None).unwrap();
    let cql_log = fit(&mut cql, &data, 20, 8, 5, &mut train_rng, |_| {}).unwrap();
    TinyRun {
        pretrain: pretrain_report,
        bc_log,
        cql_log,
        bc_metrics: lab.evaluate(bc.recommender(), 40, seed).unwrap(),
        cql_metrics: lab.evaluate(cql.recommender(), 40, seed).unwrap(),
        checkpoint: cql.training_state("cql").unwrap().to_bytes().unwrap(),
    }
}

#[test]
fn same_seed_same_metrics_on_cpu() {
    let started = Instant::now();
    let a = tiny_run(31);
    let b = tiny_run(31);
    let c = tiny_run(32);
    eprintln!("three tiny runs in {:.1}s: {:?} / {:?}", started.elapsed().as_secs_f64(), a.bc_metrics, a.cql_metrics);
    assert_eq!(a.cql_metrics.sessions, 40);
    assert_eq!(a.cql_log.len(), 4);
    assert!(a.cql_log.iter().all(|l| l.losses.values().all(|v| v.is_finite())));
    // Bit for bit: losses, metrics and weights.
    assert_eq!(a, b);
    // And the seed matters: another one trains other weights.
    assert_ne!(a.checkpoint, c.checkpoint);
    assert_ne!(a.cql_log, c.cql_log);
}

// ---------------------------------------------------------------------------------------------
// 7. Discrete BCQ and IQL
// ---------------------------------------------------------------------------------------------

#[test]
fn bcq_filter_and_iql_expectile_equal_hand_computation() {
    use irec_learn::algo::bcq::{allowed_slots, constrained_argmax};
    use irec_learn::algo::iql::expectile_loss;
    // Two heads (3 and 2 slots), two rows. G's probabilities, as logs.
    let g = [[0.6f32, 0.3, 0.1, 0.9, 0.1], [0.2, 0.2, 0.6, 0.5, 0.5]];
    let log_g: Vec<Vec<f32>> = g.iter().map(|r| r.iter().map(|p| p.ln()).collect()).collect();
    let heads = [3usize, 2];
    // τ = 0.4: row 0 keeps 0.6 and 0.3 (0.3 ≥ 0.24) but not 0.1; head 2 keeps only 0.9.
    let allowed = allowed_slots(&log_g, &heads, 0.4);
    assert_eq!(allowed[0], vec![true, true, false, true, false]);
    assert_eq!(allowed[1], vec![false, false, true, true, true]);
    // Q prefers the filtered-out slots; the constrained argmax must not take them.
    let q = vec![vec![1.0f32, 2.0, 9.0, 0.0, 5.0], vec![7.0, 8.0, 1.0, 3.0, 4.0]];
    assert_eq!(constrained_argmax(&q, &allowed, &heads), vec![vec![1, 3], vec![2, 4]]);
    // τ = 0 is plain Q-learning; τ = 1 keeps the most likely slot only (both of a tie).
    assert!(allowed_slots(&log_g, &heads, 0.0).iter().flatten().all(|a| *a));
    assert_eq!(constrained_argmax(&q, &allowed_slots(&log_g, &heads, 1.0), &heads), vec![vec![0, 3], vec![2, 4]]);

    // |κ − 1(u < 0)|·u² at κ = 0.7.
    let u = Tensor::new(&[-2.0f32, 0.5, 0.0], &CPU).unwrap();
    let l = expectile_loss(&u, 0.7).unwrap().to_vec1::<f32>().unwrap();
    for (got, want) in l.iter().zip([0.3 * 4.0, 0.7 * 0.25, 0.0]) {
        close(*got as f64, want, "expectile loss");
    }
}

/// IQL's value and policy losses on a real batch equal the same quantities computed on the host
/// from its networks' outputs.
/// The published IQL's losses (no trust region; expectile 0.8, β 2, weights ≤ 5) after three
/// steps on the tiny MDP, with the batch of its first eight sessions they were computed on.
fn iql_fitted_on_tiny_mdp(
    advantage: irec_learn::algo::iql::AdvantageSource,
    weighting: irec_learn::algo::iql::AdvantageWeighting,
) -> (Vec<usize>, irec_learn::algo::iql::Iql, irec_learn::algo::dataset::Batch, irec_learn::algo::iql::IqlLosses) {
    use irec_learn::algo::iql::{Iql, IqlConfig};
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp(fx.perception.config.tracker.input, &heads);
    let cfg = IqlConfig { expectile: 0.8, beta: 2.0, max_weight: 5.0, q_hidden: Some(vec![16]), advantage, weighting, reference_kl: 0.0, ..IqlConfig::default() };
    let mut iql = Iql::new(&fx.perception, 6, &cfg, None).unwrap();
    fit(&mut iql, &data, 3, 8, 3, &mut rng::rng(2), |_| {}).unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let batch = data.batch(&idx, &CPU).unwrap();
    let (_, _, _, losses) = iql.compute_loss(&batch).unwrap();
    (heads, iql, batch, losses)
}

#[test]
fn iql_losses_equal_hand_computation_on_a_batch() {
    iql_losses_by_hand(irec_learn::algo::iql::AdvantageWeighting::Exp);
}

/// With `weighting = "binary"` every logged slot whose advantage is positive weighs 1 and every
/// other 0, whatever β: the same NLL computed on the host.
#[test]
fn iqls_binary_weighting_clones_exactly_the_slots_that_beat_v() {
    use irec_learn::algo::iql::{AdvantageWeighting, IqlConfig};
    iql_losses_by_hand(AdvantageWeighting::Binary);
    assert_eq!(IqlConfig::default().weighting, AdvantageWeighting::Exp);
    let bad = toml::from_str::<IqlConfig>("weighting = \"hard\"").unwrap_err().to_string();
    assert!(bad.contains("weighting") && bad.contains("hard"), "{bad}");
}

fn iql_losses_by_hand(weighting: irec_learn::algo::iql::AdvantageWeighting) {
    use irec_learn::algo::iql::{AdvantageSource, AdvantageWeighting};
    use irec_model::kernels::seg_log_softmax;
    let (heads, iql, batch, losses) = iql_fitted_on_tiny_mdp(AdvantageSource::Critic, weighting);

    let states = iql.critic().states(iql.recommender(), &batch).unwrap();
    let qt = host2(&iql.critic().target_q.forward(&states.s_target).unwrap());
    let v = iql.state_value(&states.s).unwrap().to_vec1::<f32>().unwrap();
    let logp = host2(&seg_log_softmax(&iql.recommender().policy.forward(&states.s).unwrap(), &heads).unwrap());
    let mask = batch.mask.to_vec1::<f32>().unwrap();
    let (mut value, mut policy, mut rows) = (0f64, 0f64, 0f64);
    for (row, m) in mask.iter().enumerate() {
        if *m == 0.0 {
            continue;
        }
        let mut off = 0;
        let (mut vrow, mut prow) = (0f64, 0f64);
        for (d, &n) in heads.iter().enumerate() {
            let slot = off + batch.actions[row][d] as usize;
            let u = (qt[row][slot] - v[row]) as f64;
            vrow += if u < 0.0 { 0.2 } else { 0.8 } * u * u;
            let w = match weighting {
                AdvantageWeighting::Exp => (2.0 * u).exp().min(5.0),
                AdvantageWeighting::Binary => f64::from(u8::from(u > 0.0)),
            };
            prow -= w * logp[row][slot] as f64;
            off += n;
        }
        value += vrow / heads.len() as f64;
        policy += prow;
        rows += 1.0;
    }
    close(losses.value as f64, value / rows, "IQL expectile loss");
    close(losses.policy as f64, policy / rows, "IQL advantage-weighted NLL");
}

/// With `advantage = "return"`, V is an expectile of the logged TD(λ) return and every head's
/// logged slot is weighted by that return minus V(s), one figure per turn: the same quantities
/// computed on the host.
#[test]
fn iqls_return_advantage_equals_hand_computation_on_a_batch() {
    use irec_learn::algo::iql::{AdvantageSource, IqlConfig};
    use irec_model::kernels::seg_log_softmax;
    let (heads, iql, batch, losses) = iql_fitted_on_tiny_mdp(AdvantageSource::Return, irec_learn::algo::iql::AdvantageWeighting::Exp);

    let states = iql.critic().states(iql.recommender(), &batch).unwrap();
    let y = iql.compute_target(&states.s_next, &batch).unwrap().to_vec1::<f32>().unwrap();
    let v = iql.state_value(&states.s).unwrap().to_vec1::<f32>().unwrap();
    let logp = host2(&seg_log_softmax(&iql.recommender().policy.forward(&states.s).unwrap(), &heads).unwrap());
    let mask = batch.mask.to_vec1::<f32>().unwrap();
    let (mut value, mut policy, mut advantage, mut rows) = (0f64, 0f64, 0f64, 0f64);
    for (row, m) in mask.iter().enumerate().filter(|(_, m)| **m > 0.0) {
        let u = (y[row] - v[row]) as f64;
        value += *m as f64 * if u < 0.0 { 0.2 } else { 0.8 } * u * u;
        advantage += u;
        let mut off = 0;
        for (d, &n) in heads.iter().enumerate() {
            policy -= (2.0 * u).exp().min(5.0) * logp[row][off + batch.actions[row][d] as usize] as f64;
            off += n;
        }
        rows += 1.0;
    }
    close(losses.value as f64, value / rows, "expectile loss of the logged return");
    close(losses.policy as f64, policy / rows, "return-weighted NLL");
    close(losses.advantage as f64, advantage / rows, "mean advantage");
    // The published IQL is the default and its TOML spelling is refused when unknown.
    assert_eq!(IqlConfig::default().advantage, AdvantageSource::Critic);
    let bad = toml::from_str::<IqlConfig>("advantage = \"monte_carlo\"").unwrap_err().to_string();
    assert!(bad.contains("advantage") && bad.contains("monte_carlo"), "{bad}");
}

#[test]
fn iqls_reference_kl_starts_at_zero_and_holds_the_actor_near_where_it_started() {
    use irec_learn::algo::iql::{Iql, IqlConfig};
    use irec_model::kernels::seg_log_softmax;
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp(fx.perception.config.tracker.input, &heads);
    let idx: Vec<usize> = (0..8).collect();
    let batch = data.batch(&idx, &CPU).unwrap();
    let base = IqlConfig { q_hidden: Some(vec![16]), reference_kl: 0.0, ..IqlConfig::default() };
    // Before any step the actor is its reference: no divergence, the published IQL's losses.
    let plain = Iql::new(&fx.perception, 6, &base, None).unwrap();
    let held = Iql::new(&fx.perception, 6, &IqlConfig { reference_kl: 10.0, ..base.clone() }, None).unwrap();
    let (a, b) = (plain.compute_loss(&batch).unwrap().3, held.compute_loss(&batch).unwrap().3);
    assert_eq!(b.reference_kl, 0.0);
    assert_eq!((a.policy, a.critic, a.value), (b.policy, b.critic, b.value));
    // After the same steps on the same batches, the held actor has moved less from where it
    // started: KL(initial ‖ trained) on the same states, computed by hand.
    let (mut plain, mut held) = (plain, held);
    fit(&mut plain, &data, 20, 8, 5, &mut rng::rng(2), |_| {}).unwrap();
    fit(&mut held, &data, 20, 8, 5, &mut rng::rng(2), |_| {}).unwrap();
    let fresh = Iql::new(&fx.perception, 6, &base, None).unwrap();
    let mask = batch.mask.to_vec1::<f32>().unwrap();
    let moved = |iql: &Iql| {
        let s = iql.critic().states(iql.recommender(), &batch).unwrap().s;
        let now = host2(&seg_log_softmax(&iql.recommender().policy.forward(&s).unwrap(), &heads).unwrap());
        let start = host2(&seg_log_softmax(&fresh.recommender().policy.forward(&s).unwrap(), &heads).unwrap());
        let (mut kl, mut rows) = (0f64, 0f64);
        for (row, m) in mask.iter().enumerate().filter(|(_, m)| **m > 0.0) {
            kl += *m as f64 * start[row].iter().zip(&now[row]).map(|(r, p)| (r.exp() * (r - p)) as f64).sum::<f64>();
            rows += 1.0;
        }
        kl / rows
    };
    let (plain_moved, held_moved) = (moved(&plain), moved(&held));
    assert!(held_moved < plain_moved, "held {held_moved} vs plain {plain_moved}");
    // The loss's own divergence is that same quantity (its reference is the initial policy).
    close(held.compute_loss(&batch).unwrap().3.reference_kl as f64, held_moved, "KL(π_ref ‖ π)");
    assert_eq!(plain.compute_loss(&batch).unwrap().3.reference_kl, 0.0, "the published IQL keeps no reference");
}

#[test]
fn iqls_trust_region_keeps_its_first_anchor_across_rounds_unless_told_to_follow_the_round() {
    use irec_learn::algo::iql::{Iql, IqlConfig, ReferencePolicy};
    use std::collections::BTreeMap;
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp(fx.perception.config.tracker.input, &heads);
    let flat = |w: BTreeMap<String, candle_core::Tensor>| -> Vec<(String, Vec<f32>)> {
        w.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
    };
    let policy_of = |iql: &Iql| flat(iql.recommender().store.tensors("policy."));
    let round_one = |reference| {
        let cfg = IqlConfig { q_hidden: Some(vec![16]), reference_kl: 1.0, reference, ..IqlConfig::default() };
        let mut iql = Iql::new(&fx.perception, 6, &cfg, None).unwrap();
        let start = policy_of(&iql);
        fit(&mut iql, &data, 10, 8, 5, &mut rng::rng(2), |_| {}).unwrap();
        (cfg, iql, start)
    };

    // The default: a learner rebuilt from round 1's training state (as the server's next round
    // is) keeps round 1's starting policy as π_ref, not round 1's result.
    let (cfg, mut first, start) = round_one(ReferencePolicy::First);
    assert_eq!(cfg.reference, IqlConfig::default().reference);
    let trained = policy_of(&first);
    assert_ne!(trained, start, "ten steps moved the policy");
    let rebuilt = Iql::new(&fx.perception, 9, &cfg, Some(&first.training_state("r1").unwrap())).unwrap();
    assert_eq!(flat(rebuilt.reference_weights().unwrap()), start);
    assert_eq!(policy_of(&rebuilt), trained, "the policy itself continues");
    first.start_round().unwrap();
    assert_eq!(flat(first.reference_weights().unwrap()), start, "an in-process round keeps it too");

    // `round`: π_ref is the policy each round starts from, whether the learner is rebuilt from
    // its state or continues in process.
    let (cfg, mut follow, _) = round_one(ReferencePolicy::Round);
    let trained = policy_of(&follow);
    let rebuilt = Iql::new(&fx.perception, 9, &cfg, Some(&follow.training_state("r1").unwrap())).unwrap();
    assert_eq!(flat(rebuilt.reference_weights().unwrap()), trained);
    follow.start_round().unwrap();
    assert_eq!(flat(follow.reference_weights().unwrap()), trained);

    let parsed: IqlConfig = toml::from_str("reference = \"round\"").unwrap();
    assert_eq!(parsed.reference, ReferencePolicy::Round);
    let bad = toml::from_str::<IqlConfig>("reference = \"deployed\"").unwrap_err().to_string();
    assert!(bad.contains("reference") && bad.contains("deployed"), "{bad}");
}

/// Share of real turns on which the deployed policy's most likely slot of head 0 is slot 1 (the
/// rewarded one), and whether it ever prefers a slot the data never shows, on any head.
fn head0_choice(rec: &irec_learn::algo::Recommender, data: &SessionDataset) -> (f64, bool) {
    let idx: Vec<usize> = (0..data.len()).collect();
    let batch = data.batch(&idx, &CPU).unwrap();
    let states = rec.tracker.unroll(&batch.features).unwrap();
    let s = states.narrow(0, 0, batch.steps).unwrap().reshape((batch.steps * batch.sessions, rec.tracker.hidden())).unwrap();
    let logits = host2(&rec.policy.forward(&s).unwrap());
    let mask = batch.mask.to_vec1::<f32>().unwrap();
    let (mut good, mut rows, mut unseen) = (0f64, 0f64, false);
    for (row, m) in mask.iter().enumerate() {
        if *m == 0.0 {
            continue;
        }
        let mut off = 0;
        for (d, &n) in data.heads.iter().enumerate() {
            let best = argmax(&logits[row][off..off + n]);
            unseen |= best >= SEEN_SLOTS;
            if d == 0 {
                good += f64::from(u8::from(best == 1));
            }
            off += n;
        }
        rows += 1.0;
    }
    (good / rows, unseen)
}

/// Both papers' claim on a tiny MDP whose data takes the rewarded slot on 5 of 16 turns: behaviour
/// cloning copies the majority's unrewarded slot; BCQ (its filter keeps the minority slot) and
/// IQL (its upper expectile values it) choose the rewarded one; neither ever prefers a slot the
/// data never shows. BCQ at τ = 1 is behaviour cloning valued by Q, and copies the majority.
#[test]
fn bcq_and_iql_beat_their_data_in_support_on_a_tiny_mdp() {
    use irec_learn::algo::bcq::{Bcq, BcqConfig};
    use irec_learn::algo::iql::{Iql, IqlConfig};
    let fx = fixture();
    let heads = fx.perception.config.heads.clone();
    let data = tiny_mdp_with(fx.perception.config.tracker.input, &heads, Some(0.3)).with_objective(&irec_learn::algo::Objective::Paper);
    let steps = 300;
    let started = Instant::now();
    let mut bc = BehaviourCloning::new(&fx.perception, 4, &BcConfig { optim: OptimConfig { lr: 2e-3, ..OptimConfig::default() } }).unwrap();
    fit(&mut bc, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let mut bcq = Bcq::new(&fx.perception, 4, &BcqConfig::default(), None).unwrap();
    let bcq_log = fit(&mut bcq, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let mut strict = Bcq::new(&fx.perception, 4, &BcqConfig { threshold: 1.0, ..BcqConfig::default() }, None).unwrap();
    fit(&mut strict, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let mut iql = Iql::new(&fx.perception, 4, &IqlConfig { reference_kl: 0.0, ..IqlConfig::default() }, None).unwrap();
    let iql_log = fit(&mut iql, &data, steps, 16, steps, &mut rng::rng(5), |_| {}).unwrap();
    let (bc_good, _) = head0_choice(bc.recommender(), &data);
    let (bcq_good, bcq_unseen) = head0_choice(bcq.recommender(), &data);
    let (strict_good, _) = head0_choice(strict.recommender(), &data);
    let (iql_good, iql_unseen) = head0_choice(iql.recommender(), &data);
    eprintln!(
        "in {:.1}s, rewarded slot chosen on: BC {bc_good:.2}, BCQ {bcq_good:.2} (τ = 1: {strict_good:.2}), IQL {iql_good:.2}; {:?} {:?}",
        started.elapsed().as_secs_f64(),
        bcq_log.last().map(|l| &l.losses),
        iql_log.last().map(|l| &l.losses)
    );
    assert!(bc_good < 0.1, "behaviour cloning should copy the majority ({bc_good})");
    assert!(strict_good < 0.1, "BCQ at τ = 1 should copy the majority ({strict_good})");
    assert!(bcq_good > 0.9, "BCQ should choose the rewarded in-support slot ({bcq_good})");
    assert!(iql_good > 0.9, "IQL should choose the rewarded in-support slot ({iql_good})");
    assert!(!bcq_unseen && !iql_unseen, "an unseen slot was preferred (BCQ {bcq_unseen}, IQL {iql_unseen})");
}

// ---------------------------------------------------------------------------------------------
// 8. The simulation-throughput benchmark, at a tiny size (its figures: docs/benchmarks.md)
// ---------------------------------------------------------------------------------------------

#[test]
fn the_throughput_benchmark_runs_every_session_on_every_thread() {
    use irec_learn::experiment::throughput::{run, ThroughputConfig};
    let fx = fixture();
    let ck = irec_learn::algo::Recommender::new(&fx.perception, 7, None).unwrap().export("fresh", 0);
    let policy = PolicyModel::from_checkpoint(&ck, &CPU).unwrap();
    let cfg = ThroughputConfig { sessions: 30, session_batch: 8, threads: 2, noise_sigma: 0.5, seed: 3 };
    let r = run(&fx.lab, &policy, &cfg).unwrap();
    assert_eq!((r.sessions, r.threads), (30, 2));
    // The same sessions, split differently, take the same turns: the split changes no outcome.
    let one = run(&fx.lab, &policy, &ThroughputConfig { threads: 1, session_batch: 30, ..cfg }).unwrap();
    assert_eq!(one.turns, r.turns);
    assert!(r.turns >= 30 && r.turns <= 30 * 50, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 9. The gate check
// ---------------------------------------------------------------------------------------------

#[test]
fn the_gate_check_estimates_a_pool_of_every_stage_the_same_way_each_time() {
    use irec_learn::algo::fqe::FqeConfig;
    use irec_learn::algo::ppo::PpoConfig;
    use irec_learn::experiment::gate_check::{run_in, GateCheckConfig};
    use irec_learn::experiment::{BehaviourConfig, ExperimentConfig, OnPolicyConfig, OfflineConfig, Silent};
    let fx = fixture();
    let quick = ExperimentConfig::quick();
    let small_batches = OptimConfig { batch_sessions: 8, ..OptimConfig::default() };
    let cfg = ExperimentConfig {
        on_policy: OnPolicyConfig {
            ppo: PpoConfig { warm_start_steps: 20, warm_start_sessions: 40, sessions_per_iteration: 16, epochs: 1, minibatch_sessions: 8, optim: small_batches.clone(), ..PpoConfig::default() },
            iterations: 1,
            warm_start_snapshots: vec![0.5, 1.0],
            snapshot_stages: vec![1.0],
            ..quick.on_policy.clone()
        },
        behaviour: BehaviourConfig { devices: 2, sessions: 40, session_batch: 10, ..quick.behaviour.clone() },
        offline: OfflineConfig {
            algo: irec_learn::algo::Algo::Iql,
            steps: 20,
            bc: BcConfig { optim: small_batches.clone() },
            iql: irec_learn::algo::iql::IqlConfig { optim: small_batches.clone(), ..Default::default() },
            ..quick.offline.clone()
        },
        eval_sessions: 20,
        ..quick
    };
    let fqe = FqeConfig { steps: 10, ensemble: 3, optim: small_batches.clone(), ..FqeConfig::default() };
    let check = GateCheckConfig::for_budget(20, fqe);
    assert_eq!((check.imitation_stages.clone(), check.offline_stages.clone()), (vec![1, 2, 20], vec![0, 2, 7, 20]));
    let a = run_in(fx.lab.clone(), &cfg, &check, &Silent).unwrap();
    // Three behaviour stages (two warm-start snapshots, one PPO), three imitation, four offline.
    let names: Vec<&str> = a.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names[..3].iter().all(|n| n.starts_with("behaviour source")) && names[3] == "imitation, 1 steps" && names[9] == "offline (iql), 20 steps", "{names:?}");
    assert_eq!(a.sessions_in_d, 40);
    for p in &a.policies {
        assert_eq!(p.metrics.sessions, 20, "{}", p.name);
        assert!(p.fqe.value.is_finite() && p.fqe.se.is_finite() && p.fqe.se > 0.0, "{}: {:?}", p.name, p.fqe);
    }
    // The server fits every policy with one seed: the same pool gets the same evidence again.
    let b = run_in(fx.lab.clone(), &cfg, &check, &Silent).unwrap();
    let evidence = |r: &irec_learn::experiment::gate_check::GateCheckReport| r.policies.iter().map(|p| (p.metrics, p.fqe)).collect::<Vec<_>>();
    assert_eq!(evidence(&a), evidence(&b));
    // A stage list that is not increasing is refused by name.
    let bad = GateCheckConfig { offline_stages: vec![0, 5, 5], ..check };
    assert!(run_in(fx.lab.clone(), &cfg, &bad, &Silent).unwrap_err().to_string().contains("gate_check.offline_stages"));
}
