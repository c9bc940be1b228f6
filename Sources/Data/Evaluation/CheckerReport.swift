import Foundation

/// Semantic accuracy over many checked images, grouped by the number of items in the scene.
///
/// Per group: class and colour accuracy over items, count accuracy over scenes, position
/// accuracy over the scenes where position was scored, and the fraction of scenes with every
/// attribute right.
public struct CheckerReport: Sendable {
    /// Tallies for one group of scenes.
    public struct Tally: Sendable, Equatable {
        public var scenes = 0
        public var items = 0
        public var classCorrect = 0
        public var colorCorrect = 0
        public var countCorrect = 0
        public var positionScored = 0
        public var positionCorrect = 0
        public var allCorrect = 0

        public init() {}

        public var classAccuracy: Double { ratio(classCorrect, items) }
        public var colorAccuracy: Double { ratio(colorCorrect, items) }
        public var countAccuracy: Double { ratio(countCorrect, scenes) }
        /// NaN when no scene had its position scored.
        public var positionAccuracy: Double { positionScored == 0 ? .nan : ratio(positionCorrect, positionScored) }
        public var allAccuracy: Double { ratio(allCorrect, scenes) }

        private func ratio(_ a: Int, _ b: Int) -> Double { b == 0 ? .nan : Double(a) / Double(b) }

        mutating func add(_ check: SceneCheck, scorePosition: Bool) {
            scenes += 1
            items += check.items.count
            classCorrect += check.classesCorrect
            colorCorrect += check.colorsCorrect
            countCorrect += check.countCorrect ? 1 : 0
            if scorePosition {
                positionScored += 1
                positionCorrect += check.positionCorrect ? 1 : 0
            }
            // Unscored position does not count against "all".
            let positionOK = !scorePosition || check.positionCorrect
            allCorrect += check.countCorrect && positionOK && check.items.allSatisfy { $0.colorCorrect && $0.classCorrect } ? 1 : 0
        }
    }

    /// Tallies by item count.
    public private(set) var groups: [Int: Tally] = [:]

    public init() {}

    /// Adds one verdict; `scorePosition` false leaves position out (prompts that do not state it).
    public mutating func add(_ check: SceneCheck, scorePosition: Bool = true) {
        groups[check.expectedCount, default: Tally()].add(check, scorePosition: scorePosition)
    }

    /// All groups together.
    public var overall: Tally {
        groups.values.reduce(into: Tally()) { total, t in
            total.scenes += t.scenes; total.items += t.items
            total.classCorrect += t.classCorrect; total.colorCorrect += t.colorCorrect
            total.countCorrect += t.countCorrect; total.positionScored += t.positionScored
            total.positionCorrect += t.positionCorrect; total.allCorrect += t.allCorrect
        }
    }

    /// A fixed-width table, one row per group and a total row.
    public var table: String {
        func cell(_ v: Double) -> String { v.isNaN ? "     —" : String(format: "%6.3f", v) }
        var lines = ["items  scenes   class  colour   count  position    all"]
        let rows = groups.keys.sorted().map { ("\($0)", groups[$0]!) } + (groups.count > 1 ? [("all", overall)] : [])
        for (name, t) in rows {
            lines.append(String(format: "%5@  %6d  ", name.padding(toLength: 5, withPad: " ", startingAt: 0) as NSString, t.scenes)
                         + [cell(t.classAccuracy), cell(t.colorAccuracy), cell(t.countAccuracy), "  " + cell(t.positionAccuracy), cell(t.allAccuracy)]
                            .joined(separator: "  "))
        }
        return lines.joined(separator: "\n")
    }

    /// The report as JSON: `{"1": {"scenes": …, "class": …, …}, "all": {…}}` (NaN as null).
    public var json: JSONValue {
        func number(_ v: Double) -> JSONValue { v.isNaN ? .null : .double((v * 10_000).rounded() / 10_000) }
        func entry(_ t: Tally) -> JSONValue {
            .object(["scenes": .int(t.scenes), "items": .int(t.items), "class": number(t.classAccuracy),
                     "color": number(t.colorAccuracy), "count": number(t.countAccuracy),
                     "position": number(t.positionAccuracy), "all": number(t.allAccuracy)])
        }
        var object: [String: JSONValue] = ["all": entry(overall)]
        for (k, t) in groups { object[String(k)] = entry(t) }
        return .object(object)
    }
}
