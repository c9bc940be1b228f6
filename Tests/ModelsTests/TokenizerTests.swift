import Foundation
import Models
import XCTest

/// Parity with Hugging Face `tokenizers` on a committed corpus; the expected ids, decodes and
/// batches were written by Tests/Reference/make_tokenizer_fixtures.py.
final class TokenizerTests: XCTestCase {
    // MARK: - Fixtures

    static let fixtures: URL = {
        if let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures/tokenizers"),
           FileManager.default.fileExists(atPath: base.path) {
            return base
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tokenizers")
    }()

    static func fixture(_ name: String) -> URL { fixtures.appendingPathComponent(name) }

    static func json(_ name: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: fixture(name)))
    }

    static let corpus: [String] = {
        (try? json("corpus.json")) as? [String] ?? []
    }()

    struct Expected {
        let dict: [String: Any]
        init(_ name: String) throws {
            dict = try XCTUnwrap(TokenizerTests.json(name) as? [String: Any])
        }
        var ids: [[Int]] { dict["ids"] as! [[Int]] }
        var decoded: [String] { dict["decoded"] as! [String] }
        var decodedSkip: [String] { dict["decoded_skip"] as! [String] }
        var decodeCases: [[String: Any]] { dict["decode_cases"] as! [[String: Any]] }
        var batches: [[String: Any]] { dict["batches"] as! [[String: Any]] }
    }

    /// Exact equality: `==` on `String` treats canonically equivalent texts ("é" and "e\u{301}") as equal.
    static func sameScalars(_ a: String, _ b: String) -> Bool {
        a.unicodeScalars.elementsEqual(b.unicodeScalars)
    }

    private func assertCorpusIds(_ tokenizer: any Tokenizer, _ expected: Expected, _ label: String,
                                 file: StaticString = #filePath, line: UInt = #line) {
        let corpus = Self.corpus
        XCTAssertGreaterThanOrEqual(corpus.count, 200, file: file, line: line)
        XCTAssertEqual(expected.ids.count, corpus.count, file: file, line: line)
        var failures = 0
        for (text, ids) in zip(corpus, expected.ids) {
            let got = tokenizer.encode(text)
            if got != ids {
                failures += 1
                if failures <= 5 {
                    XCTFail("\(label): \(text.debugDescription.prefix(120)): got \(got.prefix(40)) expected \(ids.prefix(40))",
                            file: file, line: line)
                }
            }
        }
        XCTAssertEqual(failures, 0, "\(label): \(failures) of \(corpus.count) corpus strings differ", file: file, line: line)
    }

    private func assertDecodes(_ tokenizer: any Tokenizer, _ expected: Expected, _ label: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        var failures = 0
        for (i, ids) in expected.ids.enumerated() {
            for (skip, want) in [(false, expected.decoded[i]), (true, expected.decodedSkip[i])] {
                let got = tokenizer.decode(ids, skipSpecialTokens: skip)
                if !Self.sameScalars(got, want) {
                    failures += 1
                    if failures <= 5 {
                        XCTFail("\(label) decode(skip: \(skip)) of corpus[\(i)]: got \(got.debugDescription.prefix(100)) expected \(want.debugDescription.prefix(100))",
                                file: file, line: line)
                    }
                }
            }
        }
        for c in expected.decodeCases {
            let ids = c["ids"] as! [Int]
            for (skip, key) in [(false, "text"), (true, "text_skip")] {
                let want = c[key] as! String
                let got = tokenizer.decode(ids, skipSpecialTokens: skip)
                if !Self.sameScalars(got, want) {
                    failures += 1
                    if failures <= 10 {
                        XCTFail("\(label) decode(\(ids), skip: \(skip)): got \(got.debugDescription) expected \(want.debugDescription)",
                                file: file, line: line)
                    }
                }
            }
        }
        XCTAssertEqual(failures, 0, "\(label): decode mismatches", file: file, line: line)
    }

    private func assertBatches(_ tokenizer: any Tokenizer, _ expected: Expected, _ label: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        for b in expected.batches {
            let texts = b["texts"] as! [String]
            let padding: PaddingStrategy
            switch b["padding"] as? String {
            case "longest": padding = .longest
            case "fixed": padding = .fixed(b["pad_length"] as! Int)
            default: padding = .none
            }
            let side: PaddingSide = (b["pad_side"] as? String) == "left" ? .left : .right
            let got = tokenizer.encodeBatch(texts, addSpecialTokens: b["add_special_tokens"] as! Bool,
                                            maxLength: b["truncation"] as? Int, padding: padding, padSide: side,
                                            padId: b["pad_id"] as? Int)
            XCTAssertEqual(got.ids, b["ids"] as! [[Int]], "\(label) batch ids \(b["padding"] ?? "none")", file: file, line: line)
            XCTAssertEqual(got.attentionMask, b["attention_mask"] as! [[Int]], "\(label) mask", file: file, line: line)
            XCTAssertEqual(got.tokenTypeIds, b["type_ids"] as! [[Int]], "\(label) type ids", file: file, line: line)
        }
    }

    // MARK: - SmolLM2 (byte-level BPE)

    func loadSmolLM2() throws -> ByteLevelBPETokenizer {
        try ByteLevelBPETokenizer(tokenizerJSON: Self.fixture("smollm2-tokenizer.json"),
                                  specialTokens: SpecialTokens(bos: 1, eos: 2, pad: 2, unk: 0))
    }

    func testSmolLM2MatchesReferenceIds() throws {
        let tok = try loadSmolLM2()
        XCTAssertEqual(tok.vocabularySize, 49152)
        XCTAssertEqual(tok.addedTokens.count, 17)
        XCTAssertEqual(tok.id(forToken: "<|im_start|>"), 1)
        XCTAssertEqual(tok.token(forId: 2), "<|im_end|>")
        try assertCorpusIds(tok, Expected("smollm2-expected.json"), "SmolLM2")
    }

    func testSmolLM2FromGGUFStyleArraysMatchesReferenceIds() throws {
        // The same arrays a GGUF stores: tokens in id order, "a b" merges, llama.cpp token types.
        let json = try XCTUnwrap(Self.json("smollm2-tokenizer.json") as? [String: Any])
        let model = try XCTUnwrap(json["model"] as? [String: Any])
        let vocab = try XCTUnwrap(model["vocab"] as? [String: Int])
        var tokens = [String](repeating: "", count: vocab.count)
        for (token, id) in vocab { tokens[id] = token }
        let merges = try XCTUnwrap(model["merges"] as? [String])
        let specials = Set((json["added_tokens"] as! [[String: Any]]).map { $0["id"] as! Int })
        let types = tokens.indices.map { specials.contains($0) ? 3 : 1 }
        let expected = try Expected("smollm2-expected.json")
        let tok = try ByteLevelBPETokenizer(
            tokens: tokens, merges: merges, tokenTypes: types,
            specialTokens: SpecialTokens(bos: expected.dict["bos_token_id"] as? Int, eos: expected.dict["eos_token_id"] as? Int,
                                         pad: expected.dict["pad_token_id"] as? Int),
            preTokenization: try .init(ggmlPre: "smollm"), source: "smollm2 arrays")
        XCTAssertEqual(tok.specialTokens.eos, 2)
        assertCorpusIds(tok, expected, "SmolLM2 arrays")
        assertDecodes(tok, expected, "SmolLM2 arrays")
    }

    func testSmolLM2DecodeMatchesReference() throws {
        let tok = try loadSmolLM2()
        let expected = try Expected("smollm2-expected.json")
        assertDecodes(tok, expected, "SmolLM2")
        // Byte-level BPE without a normaliser is lossless, except for bytes the vocabulary lacks
        // (SmolLM2 has no token for 0x1D, which Hugging Face drops too).
        var lossless = 0, referenceLossless = 0
        for (text, reference) in zip(Self.corpus, expected.decoded) {
            let roundTrip = tok.decode(tok.encode(text))
            XCTAssertTrue(Self.sameScalars(roundTrip, reference), roundTrip.debugDescription)
            if Self.sameScalars(roundTrip, text) { lossless += 1 }
            if Self.sameScalars(reference, text) { referenceLossless += 1 }
        }
        XCTAssertEqual(lossless, referenceLossless)
        XCTAssertGreaterThanOrEqual(lossless, Self.corpus.count - 3)
    }

    func testSmolLM2BatchesMatchReference() throws {
        try assertBatches(loadSmolLM2(), Expected("smollm2-expected.json"), "SmolLM2")
    }

    func testSmolLM2ChatTemplateMatchesTransformers() throws {
        let tok = try loadSmolLM2()
        let expected = try Expected("smollm2-expected.json")
        let template = try ChatTemplate(jinja: expected.dict["chat_template"] as! String)
        XCTAssertEqual(template, ChatTemplate.smolLM2)
        for chat in expected.dict["chats"] as! [[String: Any]] {
            let messages = (chat["messages"] as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
            let generation = chat["add_generation_prompt"] as! Bool
            XCTAssertTrue(Self.sameScalars(template.render(messages, addGenerationPrompt: generation), chat["text"] as! String))
            XCTAssertEqual(tok.encodeChat(messages, template: template, addGenerationPrompt: generation), chat["ids"] as! [Int])
        }
        let prompt = ChatTemplate.smolLM2.render([.user("Hi")])
        XCTAssertEqual(prompt, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(ChatTemplate.smolLM2.render([.system("S"), .user("U")], addGenerationPrompt: false),
                       "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n")
    }

    // MARK: - MiniLM (BERT WordPiece)

    func testMiniLMFromTokenizerJSONMatchesReference() throws {
        let tok = try WordPieceTokenizer(tokenizerJSON: Self.fixture("minilm-tokenizer.json"))
        XCTAssertEqual(tok.vocabularySize, 30522)
        XCTAssertEqual(tok.specialTokens, SpecialTokens(pad: 0, unk: 100, cls: 101, sep: 102, mask: 103))
        XCTAssertEqual(tok.modelMaxLength, 128)
        let expected = try Expected("minilm-expected.json")
        assertCorpusIds(tok, expected, "MiniLM json")
        assertDecodes(tok, expected, "MiniLM json")
        assertBatches(tok, expected, "MiniLM json")
    }

    func testMiniLMFromVocabTxtMatchesReference() throws {
        let tok = try WordPieceTokenizer(vocabTxt: Self.fixture("minilm-vocab.txt"))
        let expected = try Expected("minilm-expected.json")
        assertCorpusIds(tok, expected, "MiniLM vocab.txt")
        assertDecodes(tok, expected, "MiniLM vocab.txt")
        assertBatches(tok, expected, "MiniLM vocab.txt")
        XCTAssertEqual(tok.encode("Hello, world!"), [101, 7592, 1010, 2088, 999, 102])
        XCTAssertEqual(tok.encode(String(repeating: "a", count: 101), addSpecialTokens: false), [100])
    }

    // MARK: - CLIP

    func testCLIPFromTokenizerJSONMatchesReference() throws {
        let tok = try CLIPTokenizer(tokenizerJSON: Self.fixture("clip-tokenizer.json"))
        let expected = try Expected("clip-expected.json")
        assertCorpusIds(tok, expected, "CLIP json")
        assertDecodes(tok, expected, "CLIP json")
        assertBatches(tok, expected, "CLIP json")
    }

    func testCLIPFromVocabAndMergesMatchesReference() throws {
        let tok = try CLIPTokenizer(vocabJSON: Self.fixture("clip-vocab.json"), mergesTxt: Self.fixture("clip-merges.txt"))
        XCTAssertEqual(tok.maxLength, 77)
        XCTAssertEqual(tok.specialTokens.pad, tok.specialTokens.eos)
        let expected = try Expected("clip-expected.json")
        assertCorpusIds(tok, expected, "CLIP files")
        assertDecodes(tok, expected, "CLIP files")
        assertBatches(tok, expected, "CLIP files")
        // The text encoder's input is exactly the 77-token padded batch.
        let fixed = try XCTUnwrap(expected.batches.first)
        let encoded = tok.encodeForTextEncoder(fixed["texts"] as! [String])
        XCTAssertEqual(encoded.ids, fixed["ids"] as! [[Int]])
        XCTAssertEqual(encoded.attentionMask, fixed["attention_mask"] as! [[Int]])
        XCTAssertTrue(encoded.ids.allSatisfy { $0.count == 77 })
    }

    func testAddedTokenOptionsMatchReference() throws {
        // lstrip "<mask>", rstrip "[end]", single-word "cat", normalised "PHOTO" / "zebra".
        let tok = try TokenizerJSON.load(contentsOf: Self.fixture("clip-added-tokenizer.json"))
        let expected = try Expected("clip-added-expected.json")
        assertCorpusIds(tok, expected, "CLIP + added tokens")
        assertDecodes(tok, expected, "CLIP + added tokens")
        XCTAssertEqual(tok.addedTokens.first { $0.content == "<mask>" }?.leftStrip, true)
    }

    func testCharacterBPEWithUnknownsMatchesReference() throws {
        // Fused unknowns, ## prefix, </w> suffix, NFKC/NFD/StripAccents/Lowercase/Replace/Strip/Prepend,
        // WhitespaceSplit + Digits, TemplateProcessing, BPEDecoder.
        let tok = try TokenizerJSON.load(contentsOf: Self.fixture("options-tokenizer.json"))
        let expected = try Expected("options-expected.json")
        assertCorpusIds(tok, expected, "char BPE")
        assertDecodes(tok, expected, "char BPE")
        assertBatches(tok, expected, "char BPE")
    }

    func testLoadPicksTheTokenizerKind() throws {
        XCTAssertTrue(try TokenizerJSON.load(contentsOf: Self.fixture("smollm2-tokenizer.json")) is ByteLevelBPETokenizer)
        XCTAssertTrue(try TokenizerJSON.load(contentsOf: Self.fixture("minilm-tokenizer.json")) is WordPieceTokenizer)
        XCTAssertTrue(try TokenizerJSON.load(contentsOf: Self.fixture("clip-tokenizer.json")) is CLIPTokenizer)
        XCTAssertTrue(try TokenizerJSON.load(contentsOf: Self.fixture("options-tokenizer.json")) is ByteLevelBPETokenizer)
        XCTAssertThrowsError(try WordPieceTokenizer(tokenizerJSON: Self.fixture("clip-tokenizer.json")))
    }

    func testConcurrentEncodingGivesTheSameIds() throws {
        // The merge cache is shared; encoding from several threads must neither crash nor differ.
        let tok = try loadSmolLM2()
        let expected = try Expected("smollm2-expected.json").ids
        let corpus = Self.corpus
        let mismatches = NSLock()
        var bad = 0
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for (i, text) in corpus.enumerated() where i % 2 == worker % 2 {
                if tok.encode(text) != expected[i] {
                    mismatches.lock()
                    bad += 1
                    mismatches.unlock()
                }
            }
        }
        XCTAssertEqual(bad, 0)
    }

    /// Prints the encode time of the corpus (speed is judged by benchmarks, never asserted here).
    func testCorpusEncodingTime() throws {
        let tokenizers: [(String, any Tokenizer)] = [
            ("SmolLM2", try loadSmolLM2()),
            ("MiniLM", try WordPieceTokenizer(vocabTxt: Self.fixture("minilm-vocab.txt"))),
            ("CLIP", try CLIPTokenizer(tokenizerJSON: Self.fixture("clip-tokenizer.json"))),
        ]
        for (name, tok) in tokenizers {
            for pass in ["cold", "warm"] {
                let start = DispatchTime.now().uptimeNanoseconds
                var count = 0
                for text in Self.corpus { count += tok.encode(text).count }
                let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
                print("tokenizer speed: \(name) \(pass) \(Self.corpus.count) strings, \(count) tokens in \(String(format: "%.2f", ms)) ms")
            }
        }
    }

    // MARK: - Bad input

    private func temporaryFile(_ name: String, _ contents: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sura-tokenizer-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent(name)
        try contents.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    private func assertThrows(_ expected: TokenizerError, file: StaticString = #filePath, line: UInt = #line,
                              _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertEqual(error as? TokenizerError, expected, file: file, line: line)
        }
    }

    private let tinyBPE = """
        {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}, "decoder": {"type": "ByteLevel"}}
        """

    func testTinyTokenizerJSONWorks() throws {
        let url = try temporaryFile("tokenizer.json", tinyBPE)
        let tok = try ByteLevelBPETokenizer(tokenizerJSON: url)
        XCTAssertEqual(tok.encode("abab"), [2, 2])
        XCTAssertEqual(tok.encode("aab"), [0, 2])
        XCTAssertEqual(tok.decode([2, 0]), "aba")
    }

    func testTokenizerJSONThatDoesNotParseNamesTheFile() throws {
        let url = try temporaryFile("tokenizer.json", "{\"model\": {")
        XCTAssertThrowsError(try TokenizerJSON.load(contentsOf: url)) { error in
            guard case .invalidJSON(let source, _)? = error as? TokenizerError else {
                return XCTFail("expected invalidJSON, got \(error)")
            }
            XCTAssertEqual(source, url.path)
            XCTAssertTrue("\(error)".contains(url.path))
        }
        let list = try temporaryFile("list.json", "[1, 2]")
        XCTAssertThrowsError(try TokenizerJSON.load(contentsOf: list))
        let missing = URL(fileURLWithPath: "/nonexistent/sura/tokenizer.json")
        XCTAssertThrowsError(try TokenizerJSON.load(contentsOf: missing)) { error in
            guard case .unreadableFile(let source, _)? = error as? TokenizerError else {
                return XCTFail("expected unreadableFile, got \(error)")
            }
            XCTAssertEqual(source, missing.path)
        }
    }

    func testMissingVocabOrMergesNamesTheField() throws {
        let noVocab = try temporaryFile("a.json", #"{"model": {"type": "BPE", "merges": []}}"#)
        assertThrows(.missingField(source: noVocab.path, field: "model.vocab")) {
            _ = try TokenizerJSON.load(contentsOf: noVocab)
        }
        let noMerges = try temporaryFile("b.json", #"{"model": {"type": "BPE", "vocab": {"a": 0}}}"#)
        assertThrows(.missingField(source: noMerges.path, field: "model.merges")) {
            _ = try TokenizerJSON.load(contentsOf: noMerges)
        }
        let noModel = try temporaryFile("c.json", #"{"normalizer": null}"#)
        assertThrows(.missingField(source: noModel.path, field: "model")) {
            _ = try TokenizerJSON.load(contentsOf: noModel)
        }
        let badId = try temporaryFile("d.json", #"{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}"#)
        assertThrows(.invalidField(source: badId.path, field: "model.vocab.a", reason: "the id must be an integer in 0...4194303")) {
            _ = try TokenizerJSON.load(contentsOf: badId)
        }
    }

    func testBadMergeNamesTheFileFieldAndLine() throws {
        let three = try temporaryFile("e.json", #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a b c"]}}"#)
        assertThrows(.badMerge(source: three.path, field: "model.merges", line: 1, text: "a b c")) {
            _ = try TokenizerJSON.load(contentsOf: three)
        }
        let unknown = try temporaryFile("f.json", #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}"#)
        assertThrows(.missingToken(source: unknown.path, field: "model.merges[0]", token: "ab")) {
            _ = try TokenizerJSON.load(contentsOf: unknown)
        }
        let vocab = try temporaryFile("vocab.json", #"{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}"#)
        let merges = try temporaryFile("merges.txt", "#version: 0.2\na b\nab\n")
        assertThrows(.badMerge(source: merges.path, field: "merges.txt", line: 3, text: "ab")) {
            _ = try CLIPTokenizer(vocabJSON: vocab, mergesTxt: merges)
        }
        assertThrows(.badMerge(source: "model.gguf", field: "tokenizer.ggml.merges", line: 0, text: "ab")) {
            _ = try ByteLevelBPETokenizer(tokens: ["a", "b", "ab"], merges: ["ab"], source: "model.gguf")
        }
        assertThrows(.invalidField(source: "model.gguf", field: "addedTokens[0].id", reason: "must be in 0...4194303")) {
            _ = try ByteLevelBPETokenizer(tokens: ["a", "b", "ab"], merges: ["a b"],
                                          addedTokens: [AddedToken(content: "<x>", id: -1)], source: "model.gguf")
        }
        assertThrows(.invalidField(source: "model.gguf", field: "tokenizer.ggml.token_type", reason: "1 types for 3 tokens")) {
            _ = try ByteLevelBPETokenizer(tokens: ["a", "b", "ab"], merges: ["a b"], tokenTypes: [1], source: "model.gguf")
        }
    }

    func testVocabTxtWithoutUnknownTokenIsAnError() throws {
        let url = try temporaryFile("vocab.txt", "[PAD]\n[CLS]\n[SEP]\nhello\n")
        assertThrows(.missingToken(source: url.path, field: "unk_token", token: "[UNK]")) {
            _ = try WordPieceTokenizer(vocabTxt: url)
        }
        let json = try temporaryFile("g.json", #"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#)
        assertThrows(.missingToken(source: json.path, field: "model.unk_token", token: "[UNK]")) {
            _ = try TokenizerJSON.load(contentsOf: json)
        }
    }

    func testUnsupportedComponentsAreNamed() throws {
        let unigram = try temporaryFile("h.json", #"{"model": {"type": "Unigram", "vocab": {}}}"#)
        assertThrows(.unsupported(source: unigram.path, field: "model.type", value: "Unigram")) {
            _ = try TokenizerJSON.load(contentsOf: unigram)
        }
        let pre = try temporaryFile("i.json", """
            {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
             "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Metaspace"}]}}
            """)
        assertThrows(.unsupported(source: pre.path, field: "pre_tokenizer.pretokenizers[0].type", value: "Metaspace")) {
            _ = try TokenizerJSON.load(contentsOf: pre)
        }
        XCTAssertThrowsError(try ChatTemplate(jinja: "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }}{% endfor %}"))
        XCTAssertThrowsError(try ByteLevelBPETokenizer.PreTokenization(ggmlPre: "llama-bpe"))
    }
}
