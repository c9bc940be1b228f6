import Foundation
import Tensor

/// A word or phrase with its plural (for nouns) and whether it is reserved for evaluation.
public struct VocabularyEntry: Sendable, Equatable {
    public let singular: String
    public let plural: String
    /// Held-out words never appear in training prompts.
    public let heldOut: Bool

    init(_ singular: String, _ plural: String = "", heldOut: Bool = false) {
        self.singular = singular
        self.plural = plural
        self.heldOut = heldOut
    }
}

/// The words of the scene prompts: canonical keywords for the complex prompts and synonyms for
/// the simple ones, some of them held out for evaluation only.
public enum SceneVocabulary {
    /// Keyword names used in complex prompts, by class.
    public static let keywordNames = ["t-shirt", "trousers", "pullover", "dress", "coat",
                                      "sandal", "shirt", "sneaker", "bag", "ankle boot"]

    /// The complex-prompt name of a class ("class 12" outside 0…9).
    public static func className(_ index: Int) -> String {
        keywordNames.indices.contains(index) ? keywordNames[index] : "class \(index)"
    }

    /// Nouns per class; the first is canonical.
    public static let nouns: [[VocabularyEntry]] = [
        [.init("T-shirt", "T-shirts"), .init("top", "tops"), .init("tee", "tees", heldOut: true)],
        [.init("pair of trousers", "pairs of trousers"), .init("pair of pants", "pairs of pants"),
         .init("pair of slacks", "pairs of slacks", heldOut: true)],
        [.init("pullover", "pullovers"), .init("sweater", "sweaters"), .init("jumper", "jumpers", heldOut: true)],
        [.init("dress", "dresses"), .init("gown", "gowns"), .init("frock", "frocks", heldOut: true)],
        [.init("coat", "coats"), .init("jacket", "jackets"), .init("overcoat", "overcoats", heldOut: true)],
        [.init("sandal", "sandals"), .init("summer sandal", "summer sandals"), .init("flip-flop", "flip-flops", heldOut: true)],
        [.init("shirt", "shirts"), .init("button-up shirt", "button-up shirts"), .init("blouse", "blouses", heldOut: true)],
        [.init("sneaker", "sneakers"), .init("trainer", "trainers"), .init("running shoe", "running shoes", heldOut: true)],
        [.init("bag", "bags"), .init("handbag", "handbags"), .init("purse", "purses", heldOut: true)],
        [.init("ankle boot", "ankle boots"), .init("boot", "boots"), .init("bootie", "booties", heldOut: true)],
    ]

    /// Colour adjectives; the first is canonical.
    public static let colors: [SceneColor: [VocabularyEntry]] = [
        .red: [.init("red"), .init("crimson"), .init("scarlet", heldOut: true)],
        .yellow: [.init("yellow"), .init("golden"), .init("lemon", heldOut: true)],
        .green: [.init("green"), .init("emerald"), .init("lime", heldOut: true)],
        .blue: [.init("blue"), .init("azure"), .init("cobalt", heldOut: true)],
        .purple: [.init("purple"), .init("violet"), .init("amethyst", heldOut: true)],
    ]

    /// Ways to say "two" and "three" before a plural noun.
    public static let counts: [Int: [VocabularyEntry]] = [
        2: [.init("two"), .init("a couple of"), .init("a pair of", heldOut: true)],
        3: [.init("three"), .init("a trio of", heldOut: true)],
    ]

    /// "A is … B" for A before B along the layout's axis (horizontal: A left of B; vertical: A above B).
    static let before: [Bool: [VocabularyEntry]] = [
        true: [.init("to the left of"), .init("on the left side of", heldOut: true)],
        false: [.init("above"), .init("over", heldOut: true)],
    ]
    /// "B is … A" for B after A along the axis.
    static let after: [Bool: [VocabularyEntry]] = [
        true: [.init("to the right of"), .init("on the right side of", heldOut: true)],
        false: [.init("below"), .init("beneath", heldOut: true)],
    ]
    /// Relations that do not say which side.
    static let nextTo: [VocabularyEntry] = [.init("next to"), .init("beside", heldOut: true)]
    /// Two identical items arranged along the axis.
    static let arrangement: [Bool: [VocabularyEntry]] = [
        true: [.init("side by side"), .init("next to each other", heldOut: true)],
        false: [.init("one above the other"), .init("stacked vertically", heldOut: true)],
    ]

    /// Every held-out word or phrase (singular and plural forms).
    public static var heldOutPhrases: [String] {
        var all: [VocabularyEntry] = nouns.flatMap { $0 } + colors.values.flatMap { $0 } + counts.values.flatMap { $0 }
        all += before.values.flatMap { $0 } + after.values.flatMap { $0 } + nextTo + arrangement.values.flatMap { $0 }
        return all.filter(\.heldOut).flatMap { [$0.singular, $0.plural] }.filter { !$0.isEmpty }
    }
}

/// Picks words for one prompt: training prompts use only training words; held-out prompts
/// prefer held-out words so that they differ from anything seen in training.
struct WordChooser {
    var rng: SeededGenerator
    let heldOut: Bool

    mutating func choose(_ entries: [VocabularyEntry]) -> VocabularyEntry {
        let allowed = entries.filter { heldOut || !$0.heldOut }
        if heldOut, let reserved = allowed.first(where: \.heldOut), rng.chance(0.5) { return reserved }
        // Canonical word most of the time, so the base vocabulary dominates.
        if rng.chance(0.6) { return allowed[0] }
        return rng.pick(allowed)
    }
}

/// A narrative template for simple prompts.
public struct PromptTemplate: Sendable {
    /// Which scenes a template can describe.
    public enum Shape: String, Sendable, CaseIterable {
        /// One item.
        case one
        /// Two identical items (same class and colour).
        case pairSame = "pair_same"
        /// Two items that differ.
        case pairDistinct = "pair_distinct"
        /// Any two or three items (described by groups).
        case many
        /// Three items, not all identical, described one by one.
        case trio
    }

    /// Stable name, stored in each manifest line under `template`.
    public let id: String
    public let shape: Shape
    /// Reserved for evaluation.
    public let heldOut: Bool
    /// Whether the prompt says where items are (the checker scores position only then).
    public let statesPosition: Bool
    let render: @Sendable (inout PromptContext) -> String

    /// Whether the template can describe `scene`.
    public func applies(to scene: SceneSpec) -> Bool {
        switch shape {
        case .one: return scene.count == 1
        case .pairSame: return scene.count == 2 && scene.itemsIdentical
        case .pairDistinct: return scene.count == 2 && !scene.itemsIdentical
        case .many: return scene.count >= 2
        case .trio: return scene.count == 3 && !scene.itemsIdentical
        }
    }
}

/// The scene and a word chooser, from which templates build phrases.
struct PromptContext {
    let scene: SceneSpec
    var words: WordChooser

    /// Horizontal layouts put the pair side by side; vertical ones stack it.
    var isHorizontal: Bool { scene.layout != .vertical && scene.layout != .column }

    mutating func color(_ i: Int) -> String { words.choose(SceneVocabulary.colors[scene.items[i].color]!).singular }
    mutating func noun(_ i: Int) -> VocabularyEntry { words.choose(SceneVocabulary.nouns[scene.items[i].classIndex]) }

    /// "crimson sneaker" (no article).
    mutating func bare(_ i: Int) -> String { "\(color(i)) \(noun(i).singular)" }
    /// "a crimson sneaker", "an emerald coat".
    mutating func np(_ i: Int) -> String { PromptContext.withArticle(bare(i)) }
    /// "crimson sneakers".
    mutating func barePlural(_ i: Int) -> String { "\(color(i)) \(noun(i).plural)" }
    /// "two", "a couple of", "three".
    mutating func countWord(_ n: Int) -> String { words.choose(SceneVocabulary.counts[n]!).singular }

    mutating func pick(_ entries: [VocabularyEntry]) -> String { words.choose(entries).singular }

    /// Items grouped by (class, colour) in order of first appearance: "two red bags and a blue coat".
    mutating func groups() -> String {
        var order: [Int] = []
        var sizes: [Int: Int] = [:]
        for (i, item) in scene.items.enumerated() {
            if let first = order.first(where: { scene.items[$0].classIndex == item.classIndex && scene.items[$0].color == item.color }) {
                sizes[first, default: 1] += 1
            } else {
                order.append(i)
                sizes[i] = 1
            }
        }
        let parts = order.map { i -> String in
            let n = sizes[i]!
            return n == 1 ? np(i) : "\(countWord(n)) \(barePlural(i))"
        }
        return PromptContext.list(parts)
    }

    /// "a", "a and b", "a, b and c".
    static func list(_ parts: [String]) -> String {
        parts.count <= 1 ? parts.joined() : parts.dropLast().joined(separator: ", ") + " and " + parts.last!
    }

    static func withArticle(_ phrase: String) -> String {
        let vowel = phrase.first.map { "aeiou".contains($0.lowercased()) } ?? false
        return (vowel ? "an " : "a ") + phrase
    }

    static func capitalised(_ s: String) -> String { s.prefix(1).uppercased() + s.dropFirst() }
}

/// All simple-prompt templates and the keyword complex prompt.
public enum PromptTemplates {
    private static func t(_ id: String, _ shape: PromptTemplate.Shape, heldOut: Bool = false, position: Bool = false,
                          _ render: @escaping @Sendable (inout PromptContext) -> String) -> PromptTemplate {
        PromptTemplate(id: id, shape: shape, heldOut: heldOut, statesPosition: position, render: render)
    }

    /// Every template; ids are unique.
    public static let all: [PromptTemplate] = [
        // One item.
        t("one.plain", .one) { $0.np(0) },
        t("one.background", .one) { "\($0.np(0)) on a black background" },
        t("one.there", .one) { "there is \($0.np(0))" },
        t("one.picture", .one) { "a picture of \($0.np(0))" },
        t("one.count", .one) { "one \($0.bare(0))" },
        t("one.middle", .one, position: true) { "a single \($0.bare(0)) in the middle of the picture" },
        t("one.alone", .one) { "\($0.np(0)), nothing else" },
        t("one.showing", .one, heldOut: true) { "an image showing just one \($0.bare(0))" },
        t("one.see", .one, heldOut: true) { "I see \($0.np(0))" },
        t("one.only", .one, heldOut: true, position: true) { "only \($0.np(0)) right in the center" },

        // Two different items.
        t("pair.slots", .pairDistinct, position: true) { c in
            let a = c.np(0), b = c.np(1)
            return "\(a) \(c.scene.items[0].position.phrase) and \(b) \(c.scene.items[1].position.phrase)"
        },
        t("pair.slots_reversed", .pairDistinct, position: true) { c in
            let a = c.np(0), b = c.np(1)
            return "\(b) \(c.scene.items[1].position.phrase) and \(a) \(c.scene.items[0].position.phrase)"
        },
        t("pair.before", .pairDistinct, position: true) { c in
            let a = c.np(0), rel = c.pick(SceneVocabulary.before[c.isHorizontal]!), b = c.np(1)
            return "\(a) \(rel) \(b)"
        },
        t("pair.after", .pairDistinct, position: true) { c in
            let b = c.np(1), rel = c.pick(SceneVocabulary.after[c.isHorizontal]!), a = c.np(0)
            return "\(b) \(rel) \(a)"
        },
        t("pair.next_to", .pairDistinct) { c in
            let a = c.np(0), rel = c.pick(SceneVocabulary.nextTo), b = c.np(1)
            return "\(a) \(rel) \(b)"
        },
        t("pair.slots_leading", .pairDistinct, heldOut: true, position: true) { c in
            let a = c.np(0), b = c.np(1)
            return "\(PromptContext.capitalised(c.scene.items[0].position.phrase)) \(a), \(c.scene.items[1].position.phrase) \(b)"
        },
        t("pair.sitting_after", .pairDistinct, heldOut: true, position: true) { c in
            let b = c.np(1), rel = c.pick(SceneVocabulary.after[c.isHorizontal]!), a = c.np(0)
            return "\(b) sitting \(rel) \(a)"
        },
        t("pair.together", .pairDistinct, heldOut: true) { c in
            let a = c.np(0), b = c.np(1)
            return "\(a) together with \(b)"
        },

        // Two identical items.
        t("same.count", .pairSame) { c in "\(c.countWord(2)) \(c.barePlural(0))" },
        t("same.arranged", .pairSame, position: true) { c in
            let n = c.countWord(2), things = c.barePlural(0), how = c.pick(SceneVocabulary.arrangement[c.isHorizontal]!)
            return "\(n) \(things) \(how)"
        },
        t("same.identical", .pairSame) { c in "two identical \(c.barePlural(0))" },
        t("same.of_them", .pairSame, heldOut: true) { c in "\(c.barePlural(0)), two of them" },
        t("same.matching", .pairSame, heldOut: true, position: true) { c in
            let n = c.countWord(2), things = c.barePlural(0), how = c.pick(SceneVocabulary.arrangement[c.isHorizontal]!)
            return "\(n) matching \(things) \(how)"
        },

        // Two or three items by groups.
        t("many.groups", .many) { $0.groups() },
        t("many.background", .many) { "\($0.groups()) on a black background" },
        t("many.picture_with", .many, heldOut: true) { "a picture with \($0.groups())" },

        // Three items one by one.
        t("trio.slots", .trio, position: true) { c in
            PromptContext.list((0..<3).map { i in "\(c.np(i)) \(c.scene.items[i].position.phrase)" })
        },
        t("trio.things", .trio) { c in "three things: \(c.groups())" },
        t("trio.slots_leading", .trio, heldOut: true, position: true) { c in
            let parts = (0..<3).map { i in "\(c.scene.items[i].position.phrase) \(c.np(i))" }
            return PromptContext.capitalised(parts.joined(separator: ", "))
        },
    ]

    /// Templates for `scene` in one split.
    public static func candidates(for scene: SceneSpec, heldOut: Bool) -> [PromptTemplate] {
        all.filter { $0.heldOut == heldOut && $0.applies(to: scene) }
    }

    /// A simple prompt for `scene`: a template of the right split chosen at random, filled with
    /// words allowed in that split.
    public static func simplePrompt(for scene: SceneSpec, heldOut: Bool,
                                    using rng: inout SeededGenerator) -> (text: String, template: PromptTemplate) {
        let options = candidates(for: scene, heldOut: heldOut)
        precondition(!options.isEmpty, "no \(heldOut ? "held-out" : "training") template for a \(scene.count)-item scene")
        let template = rng.pick(options)
        var context = PromptContext(scene: scene, words: WordChooser(rng: SeededGenerator(seed: rng.next()), heldOut: heldOut))
        return (template.render(&context), template)
    }

    /// The complex prompt: every attribute as keywords, in item order:
    /// "2 objects, red sneaker at left, blue bag at right, black background".
    public static func complexPrompt(for scene: SceneSpec) -> String {
        let count = scene.count == 1 ? "1 object" : "\(scene.count) objects"
        let items = scene.items.map { "\($0.color.rawValue) \(SceneVocabulary.className($0.classIndex)) at \($0.position.rawValue)" }
        return ([count] + items + ["black background"]).joined(separator: ", ")
    }
}
