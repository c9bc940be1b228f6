import Foundation
import XCTest
import Tensor
import Models

// Parity with diffusers' schedulers (fixtures written by Tests/Reference/make_scheduler_fixtures.py)
// and the error paths of the scheduler API.

private struct TrajectoryFile: Decodable {
    let shape: [Int]
    let sample: [Float]
    let runs: [TrajectoryRun]
}

private struct TrajectoryRun: Decodable {
    let name: String
    let config: SchedulerConfig
    let steps: Int
    let timesteps: [Float]
    let initNoiseSigma: Float
    let sigmas: [Float]?
    let eta: Float?
    let useClippedModelOutput: Bool?
    let learnedVariance: Bool?
    let recordedSteps: [Int]
    let prevSamples: [[Float]]
    let predOriginalSamples: [[Float]]

    enum CodingKeys: String, CodingKey {
        case name, config, steps, timesteps, sigmas, eta
        case learnedVariance = "learned_variance"
        case initNoiseSigma = "init_noise_sigma", useClippedModelOutput = "use_clipped_model_output"
        case recordedSteps = "recorded_steps", prevSamples = "prev_samples", predOriginalSamples = "pred_original_samples"
    }
}

private struct SchedulesFile: Decodable {
    struct Schedule: Decodable {
        let name: String
        let config: SchedulerConfig
        let betas: [Float]
        let alphasCumprod: [Float]
        enum CodingKeys: String, CodingKey { case name, config, betas, alphasCumprod = "alphas_cumprod" }
    }
    struct TimestepList: Decodable {
        let scheduler: String
        let timestepSpacing: String
        let stepsOffset: Int
        let steps: Int
        let timesteps: [Float]
        enum CodingKeys: String, CodingKey {
            case scheduler, steps, timesteps, timestepSpacing = "timestep_spacing", stepsOffset = "steps_offset"
        }
    }
    let schedules: [Schedule]
    let timestepLists: [TimestepList]
    enum CodingKeys: String, CodingKey { case schedules, timestepLists = "timestep_lists" }
}

private struct TrainingFile: Decodable {
    struct Case: Decodable {
        let name: String
        let config: SchedulerConfig
        let timesteps: [Int]
        let addNoise: [Float]
        let velocity: [Float]
        let snrTimesteps: [Int]
        let snr: [Float]
        let minSnrWeights: [String: [Float]]
        enum CodingKeys: String, CodingKey {
            case name, config, timesteps, velocity, snr
            case addNoise = "add_noise", snrTimesteps = "snr_timesteps", minSnrWeights = "min_snr_weights"
        }
    }
    struct ScheduleNoise: Decodable {
        let config: SchedulerConfig
        let steps: Int
        let stepIndices: [Int]
        let addNoise: [Float]
        enum CodingKeys: String, CodingKey { case config, steps, stepIndices = "step_indices", addNoise = "add_noise" }
    }
    let shape: [Int]
    let sample: [Float]
    let noise: [Float]
    let cases: [Case]
    let scheduleNoise: [ScheduleNoise]
    enum CodingKeys: String, CodingKey { case shape, sample, noise, cases, scheduleNoise = "schedule_noise" }
}

final class SchedulerTests: XCTestCase {

    // MARK: Fixture helpers

    private func fixture<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        let url = try XCTUnwrap(Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures/schedulers"),
                                "fixture Fixtures/schedulers/\(name).json is missing")
        return try JSONDecoder().decode(T.self, from: Data(contentsOf: url))
    }

    /// |a − b| ≤ tolerance · max(1, |b|) elementwise.
    private func assertNear(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5, _ message: String,
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, "\(message): element count", file: file, line: line)
        for i in 0..<min(a.count, b.count) {
            let bound = tolerance * max(1, abs(b[i]))
            if !(abs(a[i] - b[i]) <= bound) {
                XCTFail("\(message): element \(i) is \(a[i]), diffusers has \(b[i])", file: file, line: line)
                return
            }
        }
    }

    /// The injected noise of the fixture script: sin(0.37·i + 1.1·k + 0.5), float64 then float32.
    private func sinNoise(step k: Int, shape: [Int]) -> Tensor {
        let n = shape.reduce(1, *)
        return Tensor(shape: shape, data: (0..<n).map { i in Float(Foundation.sin(0.37 * Double(i) + 1.1 * Double(k) + 0.5)) })
    }

    /// Runs one recorded configuration through Sura and compares it with diffusers.
    private func checkTrajectories(_ file: String) throws {
        let fixture = try fixture(file, as: TrajectoryFile.self)
        let start = Tensor(shape: fixture.shape, data: fixture.sample)
        XCTAssertGreaterThan(fixture.runs.count, 12)
        for run in fixture.runs {
            let label = "\(file)/\(run.name)"
            let scheduler = try SchedulerRegistry.makeScheduler(config: run.config)
            var stochastic = scheduler is DDPMScheduler
            if let ddim = scheduler as? DDIMScheduler {
                ddim.eta = run.eta ?? 0
                ddim.recomputesNoiseFromClippedSample = run.useClippedModelOutput ?? false
                stochastic = ddim.eta > 0
            }
            try scheduler.setTimesteps(run.steps)
            if run.config.useKarrasSigmas && scheduler is EulerDiscreteScheduler {
                // Fractional timesteps from NumPy's float32 log, which is not correctly rounded.
                assertNear(scheduler.timesteps, run.timesteps, tolerance: 1e-6, "\(label): timesteps")
            } else {
                XCTAssertEqual(scheduler.timesteps, run.timesteps, "\(label): timesteps")
            }
            if let sigmas = run.sigmas {
                let mine = (scheduler as? EulerDiscreteScheduler)?.sigmas ?? (scheduler as? DPMSolverMultistepScheduler)?.sigmas ?? []
                assertNear(mine, sigmas, tolerance: 1e-6, "\(label): sigmas")
            }
            XCTAssertEqual(scheduler.initNoiseSigma, run.initNoiseSigma, accuracy: 1e-6 * max(1, run.initNoiseSigma), "\(label): init sigma")

            var x = start * scheduler.initNoiseSigma
            var recorded = 0
            for (i, t) in scheduler.timesteps.enumerated() {
                let input = try scheduler.scaleModelInput(x, timestep: t)
                var output = input * Float(0.3) + Float(0.1 * Double(t) / 1000.0)
                if run.learnedVariance == true {
                    output = Tensor.concat([output, input * Float(0.2) - Float(0.1)], axis: 1)
                }
                let result = try scheduler.step(modelOutput: output, timestep: t, sample: x,
                                                varianceNoise: stochastic ? sinNoise(step: i, shape: fixture.shape) : nil)
                x = result.prevSample
                if run.recordedSteps.contains(i) {
                    assertNear(x.scalars, run.prevSamples[recorded], "\(label): prev sample at step \(i)")
                    assertNear(result.predictedOriginalSample.scalars, run.predOriginalSamples[recorded],
                               "\(label): predicted x0 at step \(i)")
                    recorded += 1
                }
            }
            XCTAssertEqual(recorded, run.recordedSteps.count, "\(label): recorded steps")
        }
    }

    // MARK: Parity with diffusers

    func testDDPMTrajectoriesMatchDiffusers() throws { try checkTrajectories("ddpm") }
    func testDDIMTrajectoriesMatchDiffusers() throws { try checkTrajectories("ddim") }
    func testEulerTrajectoriesMatchDiffusers() throws { try checkTrajectories("euler") }
    func testDPMSolverTrajectoriesMatchDiffusers() throws { try checkTrajectories("dpmsolver") }

    func testNoiseSchedulesMatchDiffusers() throws {
        let fixture = try fixture("schedules", as: SchedulesFile.self)
        for s in fixture.schedules {
            let schedule = try NoiseSchedule(config: s.config)
            if s.config.rescaleBetasZeroSnr {
                // PyTorch's float32 sqrt is often 1 ulp off (AVX-512 kernels); in the rescaling,
                // (√ᾱ − √ᾱ_T) and the ratio of neighbouring ᾱ magnify that ulp, so compare ᾱ to 1e-6
                // and β to 1e-6 + 2e-5·β.
                assertNear(schedule.alphasCumprod, s.alphasCumprod, tolerance: 1e-6, "\(s.name): alphas_cumprod")
                for (t, (mine, theirs)) in zip(schedule.betas, s.betas).enumerated() where abs(mine - theirs) > 2e-5 * theirs + 1e-6 {
                    XCTFail("\(s.name): beta \(t) is \(mine), diffusers has \(theirs)")
                    break
                }
            } else {
                assertNear(schedule.betas, s.betas, tolerance: 1e-7, "\(s.name): betas")
                assertNear(schedule.alphasCumprod, s.alphasCumprod, tolerance: 1e-7, "\(s.name): alphas_cumprod")
            }
        }
    }

    func testTimestepSpacingMatchesDiffusers() throws {
        let fixture = try fixture("schedules", as: SchedulesFile.self)
        XCTAssertGreaterThan(fixture.timestepLists.count, 150)
        for list in fixture.timestepLists {
            var config = SchedulerConfig(className: list.scheduler)
            config.betaSchedule = .scaledLinear
            config.betaStart = 0.00085
            config.betaEnd = 0.012
            config.timestepSpacing = TimestepSpacing(rawValue: list.timestepSpacing)
            config.stepsOffset = list.stepsOffset
            let scheduler = try SchedulerRegistry.makeScheduler(config: config)
            try scheduler.setTimesteps(list.steps)
            XCTAssertEqual(scheduler.timesteps, list.timesteps,
                           "\(list.scheduler) \(list.timestepSpacing) offset \(list.stepsOffset), \(list.steps) steps")
        }
    }

    func testTrailingSpacingNeverYieldsNegativeTimesteps() throws {
        // NumPy's arange gives 62 values for 61 trailing steps of 1000; diffusers then ends on −1.
        for name in [DDPMScheduler.className, DDIMScheduler.className, EulerDiscreteScheduler.className,
                     DPMSolverMultistepScheduler.className] {
            var config = SchedulerConfig(className: name)
            config.timestepSpacing = .trailing
            let scheduler = try SchedulerRegistry.makeScheduler(config: config)
            for n in [61, 103, 121, 201] {
                try scheduler.setTimesteps(n)
                XCTAssertEqual(scheduler.timesteps.count, n, "\(name) \(n) steps")
                XCTAssertEqual(scheduler.timesteps.first, 999)
                XCTAssertGreaterThanOrEqual(scheduler.timesteps.min() ?? -1, 0, "\(name) \(n) steps")
            }
        }
    }

    func testTrainingNoiseMatchesDiffusers() throws {
        let fixture = try fixture("training", as: TrainingFile.self)
        let x0 = Tensor(shape: fixture.shape, data: fixture.sample)
        let noise = Tensor(shape: fixture.shape, data: fixture.noise)
        for c in fixture.cases {
            let ddpm = try DDPMScheduler(config: c.config)
            assertNear(try ddpm.addNoise(original: x0, noise: noise, timesteps: c.timesteps).scalars, c.addNoise, "\(c.name): add_noise")
            assertNear(try ddpm.velocity(sample: x0, noise: noise, timesteps: c.timesteps).scalars, c.velocity, "\(c.name): get_velocity")
            let snr = try ddpm.schedule.signalToNoiseRatios(c.snrTimesteps)
            assertNear(snr, c.snr, "\(c.name): compute_snr")
            for (key, expected) in c.minSnrWeights {
                let parts = key.split(separator: "-")
                let prediction = try XCTUnwrap(PredictionType(rawValue: String(parts[0])))
                let gamma = try XCTUnwrap(Float(String(parts[1])))
                let weights = try ddpm.schedule.minSNRWeights(timesteps: c.snrTimesteps, gamma: gamma, predictionType: prediction)
                assertNear(weights, expected, "\(c.name): min-SNR \(key)")
            }
        }
        for c in fixture.scheduleNoise {
            let scheduler = try SchedulerRegistry.makeScheduler(config: c.config)
            try scheduler.setTimesteps(c.steps)
            // Karras timesteps are fractional; look them up by step rather than by value, since
            // NumPy's float32 log (not correctly rounded) moves them in the 7th digit.
            let timesteps = c.stepIndices.map { scheduler.timesteps[$0] }
            let noisy: Tensor
            if let euler = scheduler as? EulerDiscreteScheduler {
                noisy = try euler.addNoise(original: x0, noise: noise, scheduleTimesteps: timesteps)
            } else {
                noisy = try scheduler.addNoise(original: x0, noise: noise, timesteps: timesteps.map { Int($0) })
            }
            assertNear(noisy.scalars, c.addNoise, "\(type(of: scheduler).className) add_noise")
        }
    }

    // MARK: Behaviour

    func testDDIMRecomputesNoiseFromClippedSampleByDefault() throws {
        var config = SchedulerConfig(className: DDIMScheduler.className)
        config.predictionType = .vPrediction
        config.clipSample = true
        let ddim = try DDIMScheduler(config: config)
        XCTAssertTrue(ddim.recomputesNoiseFromClippedSample)
        try ddim.setTimesteps(10)
        // A large v forces clipping. The step must use the ε̂ that satisfies xₜ = √ᾱ·x̂₀ᶜˡⁱᵖ + √(1−ᾱ)·ε̂,
        // i.e. x_{t−1} = √ᾱₜ₋₁·x̂₀ᶜˡⁱᵖ + √(1−ᾱₜ₋₁)·ε̂ (η = 0).
        let t = ddim.discreteTimesteps[3]
        let x = Tensor(shape: [1, 1, 1, 4], data: [0.5, -0.2, 0.1, 0.9])
        let v = Tensor(shape: [1, 1, 1, 4], data: [-6, 5, 0.2, -8])
        let out = try ddim.step(modelOutput: v, timestep: Float(t), sample: x)
        XCTAssertLessThanOrEqual(out.predictedOriginalSample.scalars.map(abs).max()!, 1)
        let a = ddim.schedule.alphasCumprod[t]
        let epsilon = (x - out.predictedOriginalSample * a.squareRoot()) / (1 - a).squareRoot()
        let prev = try ddim.previousTimestep(t)
        let ap = ddim.schedule.alphasCumprod[prev]
        let expected = out.predictedOriginalSample * ap.squareRoot() + epsilon * (1 - ap).squareRoot()
        assertNear(out.prevSample.scalars, expected.scalars, "recomputed-noise DDIM step")
    }

    func testStochasticStepsUseTheGenerator() throws {
        let ddpm = try DDPMScheduler(config: SchedulerConfig())
        try ddpm.setTimesteps(10)
        let x = Tensor(shape: [1, 2, 2, 2], data: (0..<8).map { Float($0) / 8 })
        let t = ddpm.timesteps[0]
        XCTAssertThrowsError(try ddpm.step(modelOutput: x, timestep: t, sample: x)) { error in
            XCTAssertEqual(error as? SchedulerError, .missingNoiseSource(scheduler: "DDPMScheduler", timestep: t))
        }
        var g1: SeededGenerator? = SeededGenerator(seed: 42)
        var g2: SeededGenerator? = SeededGenerator(seed: 42)
        let a = try ddpm.step(modelOutput: x, timestep: t, sample: x, generator: &g1).prevSample.scalars
        let b = try ddpm.step(modelOutput: x, timestep: t, sample: x, generator: &g2).prevSample.scalars
        XCTAssertEqual(a, b)
        var rng = SeededGenerator(seed: 42)
        let z = Tensor.randn([1, 2, 2, 2], using: &rng)
        let c = try ddpm.step(modelOutput: x, timestep: t, sample: x, varianceNoise: z).prevSample.scalars
        XCTAssertEqual(a, c, "the generator's draw equals the same noise passed explicitly")
        // The final step (t = 0) adds no noise and needs no generator.
        _ = try ddpm.step(modelOutput: x, timestep: ddpm.timesteps.last!, sample: x)
    }

    func testOffsetNoiseIsConstantPerChannel() throws {
        var rng = SeededGenerator(seed: 3)
        let zeros = Tensor(zeros: [2, 3, 4, 4])
        let offset = try offsetNoise(zeros, offset: 0.1, using: &rng)
        let values = offset.scalars
        for bc in 0..<6 {
            let block = values[(bc * 16)..<(bc * 16 + 16)]
            XCTAssertEqual(Set(block).count, 1, "one offset per (batch, channel)")
        }
        XCTAssertGreaterThan(Set(values).count, 1)
        XCTAssertEqual(try offsetNoise(zeros, offset: 0, using: &rng).scalars, zeros.scalars)
        XCTAssertThrowsError(try offsetNoise(zeros, offset: -1, using: &rng))
        XCTAssertThrowsError(try offsetNoise(Tensor(zeros: [4]), offset: 0.1, using: &rng))
    }

    func testMinSNRWeightLimits() throws {
        var config = SchedulerConfig()
        config.rescaleBetasZeroSnr = true
        let schedule = try NoiseSchedule(config: config)
        XCTAssertEqual(try schedule.minSNRWeights(timesteps: [999], gamma: 5, predictionType: .epsilon), [1])
        XCTAssertEqual(try schedule.minSNRWeights(timesteps: [999], gamma: 5, predictionType: .vPrediction), [0])
        let w = try schedule.minSNRWeights(timesteps: [0], gamma: 5, predictionType: .epsilon)[0]
        XCTAssertEqual(w, 5 / schedule.signalToNoiseRatio(at: 0), accuracy: 1e-6)
        var rng = SeededGenerator(seed: 9)
        let ts = schedule.randomTimesteps(count: 200, using: &rng)
        XCTAssertTrue(ts.allSatisfy { (0..<1000).contains($0) })
        XCTAssertGreaterThan(Set(ts).count, 100)
    }

    func testConfigRoundTripsWithDiffusersKeys() throws {
        var config = SchedulerConfig(className: "DPMSolverMultistepScheduler")
        config.predictionType = .vPrediction
        config.timestepSpacing = .trailing
        config.useKarrasSigmas = true
        config.rescaleBetasZeroSnr = true
        let data = try config.jsonData()
        let text = String(decoding: data, as: UTF8.self)
        for key in ["\"_class_name\"", "\"prediction_type\" : \"v_prediction\"", "\"timestep_spacing\" : \"trailing\"",
                    "\"use_karras_sigmas\" : true", "\"rescale_betas_zero_snr\" : true", "\"num_train_timesteps\" : 1000"] {
            XCTAssertTrue(text.contains(key), "missing \(key) in \(text)")
        }
        XCTAssertFalse(text.contains("lambda_min_clipped"), "−∞ is left out rather than written as invalid JSON")
        XCTAssertEqual(try SchedulerConfig.decode(data), config)
    }

    func testConfigReadsPythonInfinityAndLoadsFromAFolder() throws {
        let json = #"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "solver_order": 2, "trained_betas": null, "variance_type": null, "flow_shift": 1.0}"#
        let config = try SchedulerConfig.decode(Data(json.utf8))
        XCTAssertEqual(config.lambdaMinClipped, -.infinity)
        XCTAssertNil(config.varianceType)

        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("sura-sched-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        try Data(json.utf8).write(to: folder.appendingPathComponent("scheduler_config.json"))
        let scheduler = try SchedulerRegistry.load(contentsOf: folder)
        XCTAssertTrue(scheduler is DPMSolverMultistepScheduler)
    }

    // MARK: Bad input

    private func assertConfigError(_ json: String, _ expected: SchedulerError, mentions words: [String],
                                   file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SchedulerRegistry.makeScheduler(config: SchedulerConfig.decode(Data(json.utf8))),
                             file: file, line: line) { error in
            XCTAssertEqual(error as? SchedulerError, expected, file: file, line: line)
            let text = "\(error)"
            for w in words { XCTAssertTrue(text.contains(w), "\"\(text)\" should mention \(w)", file: file, line: line) }
        }
    }

    func testUnknownValuesNameTheKeyAndTheAllowedValues() {
        assertConfigError(#"{"_class_name": "DDIMScheduler", "beta_schedule": "cosine"}"#,
                          .invalidValue(key: "beta_schedule", value: "cosine", allowed: ["linear", "scaled_linear", "squaredcos_cap_v2"]),
                          mentions: ["beta_schedule", "cosine", "scaled_linear"])
        assertConfigError(#"{"_class_name": "DDIMScheduler", "prediction_type": "flow_prediction"}"#,
                          .invalidValue(key: "prediction_type", value: "flow_prediction", allowed: ["epsilon", "v_prediction", "sample"]),
                          mentions: ["prediction_type", "v_prediction"])
        assertConfigError(#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "middle"}"#,
                          .invalidValue(key: "timestep_spacing", value: "middle", allowed: ["leading", "trailing", "linspace"]),
                          mentions: ["timestep_spacing", "trailing"])
        assertConfigError(#"{"_class_name": "PNDMScheduler"}"#,
                          .invalidValue(key: "_class_name", value: "PNDMScheduler", allowed: SchedulerRegistry.classNames),
                          mentions: ["_class_name", "PNDMScheduler", "EulerDiscreteScheduler"])
        assertConfigError(#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
                          .invalidValue(key: "algorithm_type", value: "sde-dpmsolver++", allowed: ["dpmsolver++"]),
                          mentions: ["algorithm_type"])
        assertConfigError(#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}"#,
                          .invalidValue(key: "solver_order", value: "4", allowed: ["1", "2", "3"]), mentions: ["solver_order"])
        assertConfigError(#"{"_class_name": "DDPMScheduler", "variance_type": "fixed_large_log"}"#,
                          .invalidValue(key: "variance_type", value: "fixed_large_log",
                                        allowed: ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]),
                          mentions: ["variance_type"])
        assertConfigError(#"{"_class_name": "DDIMScheduler", "thresholding": true}"#,
                          .unsupported(key: "thresholding", value: "true", reason: "dynamic thresholding is not implemented; use clip_sample instead"),
                          mentions: ["thresholding"])
        assertConfigError(#"{"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}"#,
                          .invalidValue(key: "timestep_type", value: "continuous", allowed: ["discrete"]), mentions: ["timestep_type"])
        assertConfigError(#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 4, "trained_betas": [0.1, 0.2]}"#,
                          .invalidConfig(key: "trained_betas", message: "has 2 values but num_train_timesteps is 4"),
                          mentions: ["trained_betas"])
        assertConfigError(#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 2, "trained_betas": [0.1, 1.5]}"#,
                          .invalidConfig(key: "trained_betas", message: "β at timestep 1 is 1.5; every β must lie in [0, 1)"),
                          mentions: ["trained_betas", "timestep 1"])
        assertConfigError(#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true, "sigma_min": -1}"#,
                          .invalidConfig(key: "sigma_min", message: "must be a positive number, got -1.0"), mentions: ["sigma_min"])
        assertConfigError(#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000000000}"#,
                          .invalidConfig(key: "num_train_timesteps", message: "1000000000 is more than the 100000 Sura accepts"),
                          mentions: ["num_train_timesteps"])
        assertConfigError(#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true}"#,
                          .unsupported(key: "use_lu_lambdas", value: "true", reason: "only the default and Karras sigmas are implemented"),
                          mentions: ["use_lu_lambdas"])
        assertConfigError(#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 0}"#,
                          .invalidConfig(key: "num_train_timesteps", message: "must be at least 1, got 0"),
                          mentions: ["num_train_timesteps"])
    }

    func testMalformedConfigFiles() {
        XCTAssertThrowsError(try SchedulerConfig.decode(Data(#"{"num_train_timesteps": "many"}"#.utf8))) { error in
            guard case .invalidConfig(let key, _)? = error as? SchedulerError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "num_train_timesteps")
        }
        XCTAssertThrowsError(try SchedulerConfig.decode(Data("{not json".utf8), path: "x/scheduler_config.json")) { error in
            guard case .unreadableConfig(let path, _)? = error as? SchedulerError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, "x/scheduler_config.json")
        }
        XCTAssertThrowsError(try SchedulerConfig.load(contentsOf: URL(fileURLWithPath: "/nonexistent/scheduler_config.json"))) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/scheduler_config.json"))
        }
    }

    private func allSchedulers(_ edit: (inout SchedulerConfig) -> Void = { _ in }) throws -> [any DiffusionScheduler] {
        try SchedulerRegistry.classNames.map { name in
            var config = SchedulerConfig(className: name)
            edit(&config)
            return try SchedulerRegistry.makeScheduler(config: config)
        }
    }

    func testStepCountsOutsideTheTrainingRangeThrow() throws {
        for scheduler in try allSchedulers() {
            for n in [0, -3, 1001] {
                XCTAssertThrowsError(try scheduler.setTimesteps(n)) { error in
                    XCTAssertEqual(error as? SchedulerError, .invalidStepCount(requested: n, numTrainTimesteps: 1000))
                    XCTAssertTrue("\(error)".contains("num_train_timesteps"))
                }
            }
        }
        // leading spacing with steps_offset 1 and 1000 steps would reach timestep 1000.
        let ddim = try allSchedulers { $0.stepsOffset = 1 }[1]
        XCTAssertThrowsError(try ddim.setTimesteps(1000)) { error in
            XCTAssertTrue("\(error)".contains("steps_offset"), "\(error)")
        }
    }

    func testStepBeforeSetTimestepsThrows() throws {
        let x = Tensor(zeros: [1, 1, 2, 2])
        for scheduler in try allSchedulers() {
            let name = type(of: scheduler).className
            XCTAssertThrowsError(try scheduler.step(modelOutput: x, timestep: 999, sample: x)) { error in
                XCTAssertEqual(error as? SchedulerError, .timestepsNotSet(scheduler: name))
                XCTAssertTrue("\(error)".contains("setTimesteps"))
            }
        }
        let euler = try allSchedulers()[2]
        XCTAssertThrowsError(try euler.scaleModelInput(x, timestep: 999))
    }

    func testStepOffTheScheduleThrows() throws {
        let x = Tensor(zeros: [1, 1, 2, 2])
        for scheduler in try allSchedulers() {
            try scheduler.setTimesteps(4)
            XCTAssertThrowsError(try scheduler.step(modelOutput: x, timestep: 12.5, sample: x), "\(type(of: scheduler))")
            XCTAssertThrowsError(try scheduler.step(modelOutput: Tensor(zeros: [1, 1, 2, 3]), timestep: scheduler.timesteps[0],
                                                    sample: x)) { error in
                guard case .shapeMismatch? = error as? SchedulerError else { return XCTFail("\(error)") }
            }
        }
        // A learned-variance DDPM needs twice the channels.
        var learned = SchedulerConfig()
        learned.varianceType = .learnedRange
        let ddpm = try DDPMScheduler(config: learned)
        try ddpm.setTimesteps(4)
        XCTAssertThrowsError(try ddpm.step(modelOutput: x, timestep: ddpm.timesteps[0], sample: x, varianceNoise: x)) { error in
            XCTAssertEqual(error as? SchedulerError, .shapeMismatch(what: "DDPMScheduler model output with variance_type learned_range",
                                                                   expected: [1, 2, 2, 2], got: [1, 1, 2, 2]))
        }
        // Euler and DPM-Solver track their position: a skipped step or one step too many throws.
        for scheduler in try allSchedulers().suffix(2) {
            try scheduler.setTimesteps(3)
            let ts = scheduler.timesteps
            _ = try scheduler.step(modelOutput: x, timestep: ts[0], sample: x)
            XCTAssertThrowsError(try scheduler.step(modelOutput: x, timestep: ts[2], sample: x)) { error in
                XCTAssertEqual(error as? SchedulerError,
                               .timestepNotInSchedule(scheduler: type(of: scheduler).className, timestep: ts[2], expected: ts[1]))
            }
            _ = try scheduler.step(modelOutput: x, timestep: ts[1], sample: x)
            _ = try scheduler.step(modelOutput: x, timestep: ts[2], sample: x)
            XCTAssertThrowsError(try scheduler.step(modelOutput: x, timestep: ts[2], sample: x)) { error in
                XCTAssertEqual(error as? SchedulerError, .scheduleFinished(scheduler: type(of: scheduler).className, steps: 3))
            }
        }
    }

    func testAddNoiseRejectsBadTimestepsAndShapes() throws {
        let schedule = try NoiseSchedule(config: SchedulerConfig())
        let x = Tensor(zeros: [2, 1, 2, 2])
        XCTAssertThrowsError(try schedule.addNoise(original: x, noise: x, timesteps: [0, 1000])) { error in
            XCTAssertEqual(error as? SchedulerError, .timestepOutOfRange(timestep: 1000, numTrainTimesteps: 1000))
        }
        XCTAssertThrowsError(try schedule.addNoise(original: x, noise: x, timesteps: [-1, 3]))
        XCTAssertThrowsError(try schedule.addNoise(original: x, noise: x, timesteps: [5])) { error in
            guard case .shapeMismatch? = error as? SchedulerError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try schedule.velocity(sample: x, noise: Tensor(zeros: [2, 1, 2, 3]), timesteps: [1, 2]))
        XCTAssertThrowsError(try schedule.minSNRWeights(timesteps: [1], gamma: 0, predictionType: .epsilon)) { error in
            XCTAssertTrue("\(error)".contains("snr_gamma"))
        }
        let euler = try EulerDiscreteScheduler(config: SchedulerConfig())
        XCTAssertThrowsError(try euler.addNoise(original: x, noise: x, timesteps: [999, 999])) { error in
            XCTAssertEqual(error as? SchedulerError, .timestepsNotSet(scheduler: "EulerDiscreteScheduler"))
        }
    }
}
