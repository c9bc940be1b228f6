import Foundation
import Tensor
import Models
import Data

/// What one kind of training run trains: the module holding the trainable parameters, the loss of
/// a micro-batch, and what to write for people to look at.
///
/// The loop (`TrainingRun`) owns optimisation, data order, randomness, checkpoints and metrics;
/// a task only turns dataset indices and their per-sample random streams into a loss.
public protocol TrainingTask: AnyObject {
    /// Holds every trainable parameter under its checkpoint name (frozen parts may live here too).
    var module: Module { get }
    /// The dataset the indices refer to.
    var dataset: ImageTextDataset { get }
    /// The mean loss over `indices`; sample b draws all its randomness from `generators[b]`.
    /// Returns the loss and named components to log (e.g. "diffusion", "kl").
    func loss(indices: [Int], generators: inout [SeededGenerator]) throws -> (total: Tensor, parts: [String: Double])
    /// The records whose prompts the evaluation samples show, the same every run; empty: none.
    var evaluationRecords: [DatasetRecord] { get }
    /// Images of `evaluationRecords[range]` with the current weights: [range.count, 3, H, W] in
    /// [0, 1]. Record k draws its noise from seed k, so the ranks can each draw a share.
    func sampleImages(step: Int, range: Range<Int>) throws -> Tensor
    /// Writes the trained result where users load it from (e.g. a model folder).
    func export(to path: String) throws -> [String]
}

/// A grid of samples and what the checker made of them.
public struct TrainingSamples {
    public var grid: PNGImage
    /// e.g. ["class": 0.8, "colour": 1.0, "count": 0.9, "position": 0.95].
    public var scores: [String: Double]
}

/// Scores generated images of dataset records against their scenes.
struct SampleScoring {
    let checker: SemanticChecker?

    static func load(_ path: String = "models/checker/fashion_classifier.safetensors") -> SampleScoring {
        SampleScoring(checker: (try? FashionClassifier(contentsOf: URL(fileURLWithPath: path))).map { SemanticChecker(classifier: $0) })
    }

    /// Accuracies of `images` ([N, 3, H, W] in [0, 1]) against the scenes of `records`; empty
    /// when there is no checker or the records carry no scene.
    func score(images: Tensor, records: [DatasetRecord]) throws -> [String: Double] {
        guard let checker else { return [:] }
        var report = CheckerReport()
        for (k, record) in records.enumerated() {
            guard let json = record.extra["scene"], let scene = try? SceneSpec(json: json) else { return [:] }
            let png = try PNGImage(tensor: images.sliced(axis: 0, k, k + 1))
            report.add(checker.check(SemanticChecker.Image(png), against: scene))
        }
        let tally = report.overall
        var scores = ["class": tally.classAccuracy, "colour": tally.colorAccuracy, "count": tally.countAccuracy,
                      "all": tally.allAccuracy]
        if tally.positionScored > 0 { scores["position"] = tally.positionAccuracy }
        return scores
    }
}
