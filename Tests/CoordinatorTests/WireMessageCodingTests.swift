import Coordinator
import Foundation
import Worker
import XCTest

/// The per-request messages are read by a scanner and written directly, without Foundation's
/// JSON coders: both directions must agree with `JSONDecoder` / `JSONEncoder` value for value,
/// and whatever the scanner does not take must still be read (or refused) by `JSONDecoder`.
final class WireMessageCodingTests: XCTestCase {
    private var generator = SystemRandomNumberGenerator()

    private static let texts = ["a", "", "quote \" and backslash \\", "tab\tnew\nline\r", "bell \u{07} us \u{1f} del \u{7f}",
                                "ünïcödé 😀 漢字", "slash / and </script>", "emoji pair 👩‍👩‍👧", "\u{2028} line separator"]
    private static let doubles: [Double] = [0, 4, 0.1, 1e-5, 123456.789, 1.5e300, -2.5, .leastNonzeroMagnitude, 7.5, 1e21]

    private func text() -> String { Self.texts.randomElement(using: &generator)! + String(Int.random(in: 0..<1000, using: &generator)) }
    private func int() -> Int { [Int.min, Int.max, 0, -1, 32, Int.random(in: -1_000_000...1_000_000, using: &generator)].randomElement(using: &generator)! }
    private func seed() -> UInt64 { [0, UInt64.max, UInt64(Int64.max) + 1, UInt64.random(in: 0...UInt64.max, using: &generator)].randomElement(using: &generator)! }
    private func double() -> Double { Self.doubles.randomElement(using: &generator)! * (Bool.random(using: &generator) ? 1 : -1) }

    private func request() -> GenerationRequest {
        GenerationRequest(id: text(), prompt: text(), negativePrompt: text(), width: int(), height: int(), steps: int(),
                          guidanceScale: double(), seed: seed(), model: text())
    }

    /// Scanner and JSONDecoder read the same value from `json`, and the scanner did read it.
    private func assertScanned<T: Codable & Equatable>(_ type: T.Type, _ json: Data, file: StaticString = #filePath, line: UInt = #line) throws {
        let reference = try JSONDecoder().decode(type, from: json)
        let scanned = WireProtocol.decodeScanned(type, from: json)
        XCTAssertNotNil(scanned, "the scanner refused \(String(decoding: json, as: UTF8.self))", file: file, line: line)
        XCTAssertEqual(scanned, reference, String(decoding: json, as: UTF8.self), file: file, line: line)
    }

    /// Written directly, read back by JSONDecoder: the same value, and the Codable form's keys.
    private func assertWritten<T: Codable & Equatable>(_ value: T, file: StaticString = #filePath, line: UInt = #line) throws {
        let json = WireProtocol.encode(value)
        XCTAssertEqual(try JSONDecoder().decode(T.self, from: json), value, String(decoding: json, as: UTF8.self), file: file, line: line)
        let keys = try XCTUnwrap(JSONSerialization.jsonObject(with: json) as? [String: Any]).keys.sorted()
        let codableKeys = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? [String: Any]).keys.sorted()
        XCTAssertEqual(keys, codableKeys, file: file, line: line)
        try assertScanned(T.self, json, file: file, line: line)
    }

    func testRandomMessagesReadAndWriteLikeFoundation() throws {
        for _ in 0..<200 {
            let batch = BatchBody(batchID: seed(), requests: (0..<Int.random(in: 0...8, using: &generator)).map { _ in request() })
            try assertWritten(batch)
            try assertScanned(BatchBody.self, try JSONEncoder().encode(batch))

            let result = WorkerResultBody(batchID: seed(), execMs: double(),
                                          images: (0..<Int.random(in: 0...8, using: &generator)).map { _ in .init(id: text(), width: int(), height: int()) })
            try assertWritten(result)
            try assertScanned(WorkerResultBody.self, try JSONEncoder().encode(result))

            let header = ResultHeader(id: text(), width: int(), height: int(), seed: seed(), queueMs: double(), execMs: double(),
                                      totalMs: double(), batchSize: int(), worker: text(), attempts: int())
            try assertWritten(header)

            let submit = SubmitBody(id: text(), prompt: text(), negativePrompt: Bool.random() ? nil : text(), width: Bool.random() ? nil : int(),
                                    height: int(), steps: Bool.random() ? nil : int(), guidanceScale: Bool.random() ? nil : double(),
                                    seed: Bool.random() ? nil : seed(), model: Bool.random() ? nil : text(), priority: int(),
                                    timeoutMs: Bool.random() ? nil : int())
            try assertScanned(SubmitBody.self, WireProtocol.encode(submit))
        }
    }

    /// What clients write by hand: any key order, whitespace, escapes of every kind, nulls for
    /// absent optional fields, exponents and fractions in numbers.
    func testHandWrittenSubmitsReadLikeFoundation() throws {
        let bodies = [
            #"{"id":"1","prompt":"a red bag"}"#,
            " \n\t{ \"prompt\" : \"a red bag\" ,\r\n \"id\" : \"2\" , \"seed\" : 0 } \n",
            #"{"id":"3","prompt":"\"quoted\" \\ \/ \b\f\n\r\t","negative_prompt":null,"width":null,"seed":null}"#,
            #"{"id":"4","prompt":"\u00e9\u6F22 \ud83d\ude00 \u0041","model":"m\u00fc"}"#,
            #"{"id":"5","prompt":"p","guidance_scale":7.5e0,"width":64,"height":-8,"steps":0,"priority":-9,"timeout_ms":1000}"#,
            #"{"id":"6","prompt":"p","guidance_scale":-0.0,"seed":18446744073709551615}"#,
            #"{"id":"7","prompt":"p","guidance_scale":1E-3}"#,
            #"{"id":"8","prompt":"ünïcödé 😀 raw UTF-8"}"#,
        ]
        for body in bodies { try assertScanned(SubmitBody.self, Data(body.utf8)) }
    }

    /// Forms the scanner leaves to JSONDecoder: the public decoder still gives JSONDecoder's
    /// answer, a value or an error naming the problem.
    func testWhatTheScannerRefusesJSONDecoderStillDecides() throws {
        let refused = [
            #"{"id":"1","prompt":"p","width":32.0}"#,                   // an integer written with a fraction
            #"{"id":"1","prompt":"p","width":1e2}"#,                    // or an exponent
            #"{"id":"1","prompt":"p","id":"2"}"#,                        // a repeated key
            #"{"id":"1","prompt":"p","guidance":3}"#,                    // an unknown key
            #"{"id":"1"}"#,                                              // a missing field
            #"{"id":"1","prompt":"nul \u0000 inside"}"#,                 // a NUL character
            #"{"id":"1","prompt":"lone \ud800 surrogate"}"#,
            #"{"id":"1","prompt":"p","seed":-1}"#,
            #"{"id":"1","prompt":"p","seed":-0}"#,                     // a sign on an unsigned field
            #"{"id":"1","prompt":"p","guidance_scale":1e-400}"#,         // a number that underflows to zero
            #"{"id":"1","prompt":"p","guidance_scale":1e400}"#,          // or overflows
            #"{"id":"1","prompt":"p","width":99999999999999999999}"#,
            #"{"id":"1","prompt":"p"} trailing"#,
            #"{"id":"1","prompt":"p",}"#,
            #"{"id":1,"prompt":"p"}"#,
            "{\"id\":\"1\",\"prompt\":\"raw\ttab\"}",
            #"{"id":"1","prompt":"p","width":012}"#,
            "",
        ]
        for body in refused {
            let data = Data(body.utf8)
            XCTAssertNil(WireProtocol.decodeScanned(SubmitBody.self, from: data), body)
            let reference = Result { try JSONDecoder().decode(SubmitBody.self, from: data) }
            let decoded = Result { try WireProtocol.decode(SubmitBody.self, from: data, what: "SUBMIT body") }
            switch (reference, decoded) {
            case let (.success(expected), .success(value)): XCTAssertEqual(value, expected, body)
            case (.failure, .failure(let error)): XCTAssertEqual((error as? WireError)?.code, .badRequest, body)
            default: XCTFail("\(body): JSONDecoder gave \(reference), WireProtocol.decode gave \(decoded)")
            }
        }
        // A request key the worker does not know is ignored by the synthesized decoder; the
        // scanner leaves the batch to it rather than guessing.
        let batch = #"{"batch_id":1,"requests":[{"id":"1","prompt":"p","negative_prompt":"","width":8,"height":8,"steps":1,"guidance_scale":1,"seed":0,"model":"m","extra":true}]}"#
        XCTAssertNil(WireProtocol.decodeScanned(BatchBody.self, from: Data(batch.utf8)))
        XCTAssertEqual(try WireProtocol.decode(BatchBody.self, from: Data(batch.utf8), what: "BATCH").requests.first?.prompt, "p")
        // Types without a scanned form always go to JSONDecoder.
        XCTAssertNil(WireProtocol.decodeScanned(FailedBody.self, from: Data(#"{"batch_id":1,"message":"m"}"#.utf8)))
    }

    /// Damaged messages (bytes flipped, cut short, spliced) never trap the scanner, and whatever
    /// it still reads is what JSONDecoder reads.
    func testDamagedMessagesNeverTrapAndAgreeWithFoundation() throws {
        let batch = WireProtocol.encode(BatchBody(batchID: 3, requests: (0..<3).map { _ in request() }))
        let submit = Data(#"{"id":"4","prompt":"\u00e9 \ud83d\ude00 \"q\"","guidance_scale":7.5e0,"seed":12,"width":null}"#.utf8)
        let alphabet = Array(#"{}[]",:\/u0123456789abcdefnulltrue-+.eE "#.utf8) + [0x00, 0x1f, 0x80, 0xc3, 0xff]
        var agreed = 0
        for round in 0..<3000 {
            var bytes = [UInt8](round % 2 == 0 ? batch : submit)
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[at] = alphabet.randomElement(using: &generator)!
                case 1: bytes.removeSubrange(at...)
                default: bytes.insert(alphabet.randomElement(using: &generator)!, at: at)
                }
                if bytes.isEmpty { break }
            }
            let data = Data(bytes)
            if round % 2 == 0, let scanned = WireProtocol.decodeScanned(BatchBody.self, from: data) {
                XCTAssertEqual(scanned, try? JSONDecoder().decode(BatchBody.self, from: data), String(decoding: data, as: UTF8.self))
                agreed += 1
            } else if round % 2 == 1, let scanned = WireProtocol.decodeScanned(SubmitBody.self, from: data) {
                XCTAssertEqual(scanned, try? JSONDecoder().decode(SubmitBody.self, from: data), String(decoding: data, as: UTF8.self))
                agreed += 1
            }
        }
        XCTAssertGreaterThan(agreed, 0, "some damage (inside a string, say) leaves a message the scanner still reads")
    }

    /// A value without a JSON form (a non-finite number) is left to JSONEncoder, as the header
    /// always was, instead of writing `nan` into the message.
    func testNonFiniteNumbersFallBackToTheEncoder() {
        let result = WorkerResultBody(batchID: 1, execMs: .infinity, images: [])
        XCTAssertFalse(String(decoding: WireProtocol.encode(result), as: UTF8.self).contains("inf"))
        var request = GenerationRequest(id: "1", prompt: "p")
        request.guidanceScale = .nan
        XCTAssertFalse(String(decoding: WireProtocol.encode(BatchBody(batchID: 1, requests: [request])), as: UTF8.self).contains("nan"))
    }
}
