import Coordinator
import Tensor
import Foundation
import Worker
import XCTest

/// Frame parsing, JSON bodies with field-naming errors, the null executor and the metrics text.
final class WireProtocolTests: XCTestCase {
    func testFramesRoundTripAndTagChecks() throws {
        let frames = WireProtocol.frames(WireProtocol.submit, [Data("{}".utf8)])
        XCTAssertEqual(String(decoding: frames[0], as: UTF8.self), "sura/1")
        let (command, payload) = try WireProtocol.parse(frames)
        XCTAssertEqual(command, "SUBMIT")
        XCTAssertEqual(payload, [Data("{}".utf8)])

        XCTAssertThrowsError(try WireProtocol.parse([Data("sura/2".utf8), Data("SUBMIT".utf8)])) { error in
            XCTAssertEqual((error as? WireError)?.code, .unsupportedVersion)
            XCTAssertTrue("\(error)".contains("sura/1"), "\(error)")
        }
        XCTAssertThrowsError(try WireProtocol.parse([Data("hello".utf8)])) { error in
            XCTAssertEqual((error as? WireError)?.code, .badRequest)
            XCTAssertTrue("\(error)".contains("frame 0"), "\(error)")
        }
        XCTAssertThrowsError(try WireProtocol.parse([Data("sura/1".utf8)])) { error in
            XCTAssertTrue("\(error)".contains("frame 1"), "\(error)")
        }
        XCTAssertThrowsError(try WireProtocol.parse([Data("sura/1".utf8), Data([0xff, 0x00])]))
        XCTAssertThrowsError(try WireProtocol.parse([Data]()))
    }

    func testSubmitBodyErrorsNameTheField() throws {
        func decodeError(_ json: String) -> String {
            do {
                _ = try WireProtocol.decode(SubmitBody.self, from: Data(json.utf8), what: "SUBMIT body")
                return "no error"
            } catch {
                XCTAssertEqual((error as? WireError)?.code, .badRequest, "\(error)")
                return "\(error)"
            }
        }
        XCTAssertTrue(decodeError(#"{"prompt": "x"}"#).contains("'id'"))
        XCTAssertTrue(decodeError(#"{"id": "a", "prompt": "x", "width": "wide"}"#).contains("'width'"))
        XCTAssertTrue(decodeError(#"{"id": "a", "prompt": "x", "guidance": 3}"#).contains("unknown field 'guidance'"))
        // Of several unknown fields the first by name is named, whatever their order in the body.
        XCTAssertTrue(decodeError(#"{"zeta": 1, "id": "a", "prompt": "x", "beta": 2}"#).contains("unknown field 'beta'"))
        XCTAssertTrue(decodeError(#"{"id": "a", "prompt": 7}"#).contains("'prompt'"))
        XCTAssertTrue(decodeError("not json").contains("not valid JSON"))
        let body = try WireProtocol.decode(SubmitBody.self, from: Data(#"{"id":"a","prompt":"red shoe","seed":18446744073709551615,"guidance_scale":4}"#.utf8), what: "x")
        XCTAssertEqual(body.seed, UInt64.max)
        XCTAssertEqual(body.guidanceScale, 4)
        let encoded = String(decoding: WireProtocol.encode(body), as: UTF8.self)
        XCTAssertTrue(encoded.contains(#""guidance_scale":4"#), encoded)
    }

    /// RESULT headers are written without JSONEncoder: every field reads back exactly, through
    /// escapes, control characters, non-ASCII text and extreme numbers.
    func testResultHeadersWrittenDirectlyReadBackExactly() throws {
        let strings = ["a", "", "quote \" and backslash \\", "tab\tnew\nline\r", "bell \u{07} nul \u{00} us \u{1f}",
                       "ünïcödé 😀 漢字", "slash / and </script>"]
        let numbers: [Double] = [0, 4, 0.1, 1e-5, 123456.789, 1.5e300, -2.5, Double.leastNonzeroMagnitude]
        for (k, text) in strings.enumerated() {
            let header = ResultHeader(id: text, width: 32 + k, height: -k, seed: k == 0 ? UInt64.max : UInt64(k),
                                      queueMs: numbers[k % numbers.count], execMs: numbers[(k + 3) % numbers.count],
                                      totalMs: numbers[(k + 5) % numbers.count], batchSize: k, worker: strings[(k + 1) % strings.count],
                                      attempts: Int.max - k)
            let data = WireProtocol.encode(header)
            XCTAssertEqual(try WireProtocol.decode(ResultHeader.self, from: data, what: "RESULT header"), header, String(decoding: data, as: UTF8.self))
            // Any JSON reader agrees, and the keys are those of the Codable form.
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            let codable = try XCTUnwrap(try JSONSerialization.jsonObject(with: JSONEncoder().encode(header)) as? [String: Any])
            XCTAssertEqual(object.keys.sorted(), codable.keys.sorted())
            XCTAssertEqual(object["id"] as? String, text)
        }
        // A number without a JSON form falls back to the encoder's own handling rather than writing nan.
        let odd = ResultHeader(id: "x", width: 1, height: 1, seed: 1, queueMs: .nan, execMs: 0, totalMs: 0, batchSize: 1, worker: "w", attempts: 1)
        XCTAssertFalse(String(decoding: WireProtocol.encode(odd), as: UTF8.self).contains("nan"))
    }

    func testRequestPolicyFillsDefaults() throws {
        let (request, priority, timeout) = try RequestPolicy().admit(SubmitBody(id: "a", prompt: "two red bags"))
        XCTAssertEqual(request.width, 32)
        XCTAssertEqual(request.steps, 25)
        XCTAssertEqual(request.model, "default")
        XCTAssertEqual(priority, 0)
        XCTAssertEqual(timeout, 60)
    }

    func testNullExecutorIsDeterministicPerRequestAndWritesValidPNGs() throws {
        let executor = NullImageExecutor()
        let a = GenerationRequest(id: "1", prompt: "red bag", width: 16, height: 8, seed: 3)
        let b = GenerationRequest(id: "2", prompt: "blue shoe", width: 16, height: 8, seed: 3)
        let alone = try executor.run(batch: [a])
        let together = try executor.run(batch: [b, a])
        XCTAssertEqual(alone[0].png, together[1].png, "the image depends on the request, not the batch")
        XCTAssertNotEqual(together[0].png, together[1].png)
        let decoded = try PNGImage(pngData: alone[0].png)
        XCTAssertEqual([decoded.width, decoded.height, decoded.channels], [16, 8, 3])
        XCTAssertEqual(decoded.pixels, NullImageExecutor.pixels(for: a))

        let failing = NullImageExecutor(failingPrompt: "fail me")
        XCTAssertThrowsError(try failing.run(batch: [a, GenerationRequest(id: "9", prompt: "fail me")])) { error in
            XCTAssertEqual(error as? InferenceExecutionError, .injectedFailure(id: "9"))
        }
        XCTAssertThrowsError(try executor.run(batch: [GenerationRequest(id: "w", prompt: "p", width: 0)])) { error in
            XCTAssertTrue("\(error)".contains("'width'"), "\(error)")
        }
    }

    func testMetricsExpositionFormat() {
        let registry = MetricsRegistry()
        registry.counter("sura_things_total", help: "Things.", labels: ["kind": "a\"b"]).increment(by: 2)
        registry.gauge("sura_level", help: "Level.").set(1.5)
        let histogram = registry.histogram("sura_seconds", help: "Seconds.", buckets: [0.1, 1])
        histogram.observe(0.05)
        histogram.observe(0.5)
        histogram.observe(5)
        let text = registry.exposition()
        XCTAssertTrue(text.contains("# TYPE sura_things_total counter\nsura_things_total{kind=\"a\\\"b\"} 2\n"), text)
        XCTAssertTrue(text.contains("sura_level 1.5\n"), text)
        XCTAssertTrue(text.contains("sura_seconds_bucket{le=\"0.1\"} 1\nsura_seconds_bucket{le=\"1\"} 2\nsura_seconds_bucket{le=\"+Inf\"} 3\n"), text)
        XCTAssertTrue(text.contains("sura_seconds_sum 5.55\nsura_seconds_count 3\n"), text)
        XCTAssertTrue(registry.counter("sura_things_total", help: "", labels: ["kind": "a\"b"]) === registry.counter("sura_things_total", help: "", labels: ["kind": "a\"b"]))
    }
}
