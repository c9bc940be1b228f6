import Foundation

/// Scores a checker on scenes whose answers are known: rendered scenes, where any mistake is
/// the checker's own. This is the ceiling against which generated images are read.
public enum SceneCheckerScoring {
    /// Checks `scenes` examples of `builder` (rendered, not written) in batches and tallies them.
    public static func score(checker: SemanticChecker, builder: SceneDatasetBuilder, scenes: Int,
                             batch: Int = 256) -> CheckerReport {
        var report = CheckerReport()
        var start = 0
        while start < scenes {
            let end = min(scenes, start + batch)
            let examples = (start..<end).map { builder.example($0) }
            let images = examples.map {
                SemanticChecker.Image(pixels: builder.render($0), width: $0.scene.canvas, height: $0.scene.canvas, channels: 3)
            }
            for check in checker.check(images, against: examples.map(\.scene)) { report.add(check) }
            start = end
        }
        return report
    }
}
