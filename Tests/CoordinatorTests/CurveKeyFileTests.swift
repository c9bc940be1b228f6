import Coordinator
import Foundation
import Worker
import XCTest

/// Key files, authorized-keys files and the authorizer, plus an in-process CURVE scheduler.
final class CurveKeyFileTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        try XCTSkipUnless(CurveSupport.isAvailable, "this libzmq has no CURVE support")
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sura-curve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    private func assertFileError(_ expression: @autoclosure () throws -> Any, line expectedLine: Int?, contains text: String,
                                 file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            guard let error = error as? CurveKeyFileError else { return XCTFail("not a CurveKeyFileError: \(error)", file: file, line: line) }
            XCTAssertEqual(error.file, "test.key", file: file, line: line)
            XCTAssertEqual(error.line, expectedLine, "\(error)", file: file, line: line)
            XCTAssertTrue(error.message.contains(text), "\(error)", file: file, line: line)
            XCTAssertTrue(error.description.hasPrefix("test.key" + (expectedLine.map { ":\($0):" } ?? ":")), error.description, file: file, line: line)
        }
    }

    func testGeneratedPairRoundTripsThroughItsFiles() throws {
        let pair = try CurveKeyPair.generate()
        XCTAssertEqual(pair.publicKey.z85.count, 40)
        XCTAssertEqual(pair.publicKey.bytes.count, 32)
        XCTAssertNotEqual(try CurveKeyPair.generate().publicKey, pair.publicKey)
        let files = try pair.write(directory: directory.appendingPathComponent("keys"), name: "server")
        XCTAssertEqual(files.secret.lastPathComponent, "server.key")
        XCTAssertEqual(try CurveKeyPair.load(contentsOf: files.secret), pair)
        XCTAssertEqual(try CurveKeyPair.load(contentsOf: files.public), CurveKeyPair(publicKey: pair.publicKey))
        let mode = { (url: URL) in (try FileManager.default.attributesOfItem(atPath: url.path)[.posixPermissions] as? NSNumber)?.intValue }
        XCTAssertEqual(try mode(files.secret), 0o600)
        XCTAssertEqual(try mode(files.public), 0o644)
        XCTAssertNil(CurveKeyPair.permissionWarning(for: files.secret))
        XCTAssertFalse(try String(contentsOf: files.public, encoding: .utf8).contains(pair.secretKey!.z85), "the .pub holds no secret")
        // No silent overwrite of a key.
        XCTAssertThrowsError(try CurveKeyPair.generate().write(directory: directory.appendingPathComponent("keys"), name: "server"))
        XCTAssertEqual(try CurveKeyPair.load(contentsOf: files.secret), pair)
        chmod(files.secret.path, 0o644)
        XCTAssertNotNil(CurveKeyPair.permissionWarning(for: files.secret))
    }

    func testSecretOnlyFileDerivesItsPublicKeyAndPublicOnlyFileHasNoSecret() throws {
        let pair = try CurveKeyPair.generate()
        let derived = try CurveKeyPair.parse("# comment\n\n  secret-key = \"\(pair.secretKey!.z85)\"  \r\n", file: "test.key")
        XCTAssertEqual(derived, pair)
        let publicOnly = try CurveKeyPair.parse("public-key=\(pair.publicKey.z85)", file: "test.key")
        XCTAssertNil(publicOnly.secretKey)
        assertFileError(try publicOnly.requireSecret(file: "test.key"), line: nil, contains: "public key file")
    }

    func testMalformedKeyFilesNameTheFileAndLine() throws {
        let pair = try CurveKeyPair.generate(), other = try CurveKeyPair.generate()
        let good = pair.publicKey.z85
        assertFileError(try CurveKeyPair.parse("# only comments\n", file: "test.key"), line: nil, contains: "no public-key or secret-key")
        assertFileError(try CurveKeyPair.parse("\npublic-key = \(good.dropLast())\n", file: "test.key"), line: 2, contains: "40 Z85 characters, got 39")
        assertFileError(try CurveKeyPair.parse("public-key = \(good.dropLast())~\n", file: "test.key"), line: 1, contains: "'~' at position 40")
        assertFileError(try CurveKeyPair.parse("# x\npublic key\n", file: "test.key"), line: 2, contains: "expected 'public-key = …'")
        assertFileError(try CurveKeyPair.parse("private-key = \(good)\n", file: "test.key"), line: 1, contains: "unknown field 'private-key'")
        assertFileError(try CurveKeyPair.parse("public-key = \(good)\npublic-key = \(good)\n", file: "test.key"), line: 2, contains: "appears twice (first on line 1)")
        assertFileError(try CurveKeyPair.parse("public-key = \(other.publicKey)\nsecret-key = \(pair.secretKey!)\n", file: "test.key"),
                        line: 1, contains: "not the public key of the secret-key on line 2")
        // 40 Z85 characters that overflow 32 bits per group are not a key.
        assertFileError(try CurveKeyPair.parse("public-key = \(String(repeating: "#", count: 40))", file: "test.key"), line: 1, contains: "not a valid Z85")
        XCTAssertThrowsError(try CurveKeyPair.load(contentsOf: directory.appendingPathComponent("missing.key"), as: "test.key")) { error in
            XCTAssertEqual("\(error)", "test.key: does not exist")
        }
    }

    func testAuthorizedKeysFileFormat() throws {
        let keys = try (0..<4).map { _ in try CurveKeyPair.generate() }
        // Z85 has '#' (digit 84), but never as a key's first character: the first digit of a 32-bit group is at most 82.
        XCTAssertNil(CurveKey(z85: "#" + keys[0].publicKey.z85.dropFirst()))
        var hashKey: CurveKey?
        for _ in 0..<200 where hashKey == nil {  // a key with '#' inside (each has one with probability ~0.37)
            let candidate = try CurveKeyPair.generate().publicKey
            if candidate.z85.contains("#") { hashKey = candidate }
        }
        let text = """
            # workers of rack 3
            \(keys[0].publicKey)
              \(keys[1].publicKey)   gpu-node-7 (label)

            \(keys[2].publicFileText(name: "appended"))
            \(hashKey!) labelled
            \(keys[0].publicKey)
            """
        let list = try AuthorizedKeys.parse(text, file: "test.key")
        XCTAssertEqual(list.keys, Set([keys[0].publicKey, keys[1].publicKey, keys[2].publicKey, hashKey!]))
        XCTAssertFalse(list.keys.contains(keys[3].publicKey))
        XCTAssertEqual(try AuthorizedKeys.parse("# nobody\n", file: "test.key").keys, [])
        assertFileError(try AuthorizedKeys.parse("\(keys[0].publicKey)\nnot-a-key\n", file: "test.key"), line: 2, contains: "40 Z85 characters, got 9")
        assertFileError(try AuthorizedKeys.parse(try keys[3].keyFileText(name: "oops"), file: "test.key"), line: 4, contains: "secret key does not belong")
    }

    func testAuthorizerRereadsTheFileWhenItChanges() throws {
        let server = try CurveKeyPair.generate(), worker = try CurveKeyPair.generate(), late = try CurveKeyPair.generate()
        let file = directory.appendingPathComponent("authorized_keys")
        try "\(worker.publicKey)\n".write(to: file, atomically: true, encoding: .utf8)
        let logs = LogCapture()
        let authorizer = try CurveAuthorizer(authorizedKeysFile: file, alwaysAllowed: [server.publicKey], log: { logs.append($0) })
        XCTAssertEqual(authorizer.decide(worker.publicKey, now: 0), .allowed)
        XCTAssertEqual(authorizer.decide(server.publicKey, now: 0), .allowed)
        XCTAssertEqual(authorizer.decide(late.publicKey, now: 0), .refused(reason: "not listed in \(file.path)"))
        try "\(worker.publicKey)\n\(late.publicKey)\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(authorizer.decide(late.publicKey, now: 2), .allowed)
        XCTAssertTrue(logs.contains("2 authorized keys (was 1)"), "\(logs.all)")
        // A file broken while editing keeps the previous list.
        try "garbage\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(authorizer.decide(late.publicKey, now: 4), .allowed)
        XCTAssertTrue(logs.contains("keeping the previous 2 authorized keys"), "\(logs.all)")
        let open = try CurveAuthorizer(authorizedKeysFile: nil, alwaysAllowed: [], log: { _ in })
        XCTAssertEqual(open.decide(late.publicKey), .allowed, "without a file, any key")
        try "nope\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CurveAuthorizer(authorizedKeysFile: file, alwaysAllowed: [], log: { _ in }))
    }

    /// A CURVE scheduler and workers in one process: an authorized worker serves, an unknown key
    /// and a plain client are never answered.
    func testInProcessCurveSchedulerServesOnlyAuthorizedKeys() throws {
        let server = try CurveKeyPair.generate(), worker = try CurveKeyPair.generate(), intruder = try CurveKeyPair.generate()
        let file = directory.appendingPathComponent("authorized_keys")
        try "\(worker.publicKey) worker\n".write(to: file, atomically: true, encoding: .utf8)
        let context = try ZMQContext()
        let logs = LogCapture()
        var configuration = SchedulerConfiguration()
        configuration.heartbeatInterval = 0.1
        let scheduler = try InferenceScheduler(configuration: configuration, frontend: "tcp://127.0.0.1:*", backend: "tcp://127.0.0.1:*",
                                               metrics: MetricsRegistry(), context: context,
                                               curve: CurveServerSecurity(keyPair: server, authorizedKeysFile: file),
                                               log: { logs.append("scheduler: " + $0) })
        XCTAssertEqual(scheduler.curvePublicKey, server.publicKey)
        let schedulerThread = Thread { try? scheduler.run() }
        schedulerThread.start()
        var workers: [(InferenceWorkerClient, Thread)] = []
        defer {
            for (client, _) in workers { client.requestStop() }
            for (_, thread) in workers { _ = eventually(timeout: 10) { thread.isFinished } }
            scheduler.requestStop(drain: false)
            _ = eventually(timeout: 10) { schedulerThread.isFinished }
        }
        for (name, keys) in [("good", worker), ("intruder", intruder)] {
            var settings = InferenceWorkerConfiguration(scheduler: scheduler.backendEndpoint, name: name)
            settings.heartbeatInterval = 0.1
            settings.curve = CurveClientSecurity(serverKey: server.publicKey, keyPair: keys)
            let client = try InferenceWorkerClient(configuration: settings, executor: NullImageExecutor(), context: context,
                                                   log: { logs.append($0) })
            let thread = Thread { try? client.run() }
            thread.start()
            workers.append((client, thread))
        }
        let client = try SchedulerClient(endpoint: scheduler.frontendEndpoint, context: context,
                                         curve: CurveClientSecurity(serverKey: server.publicKey, keyPair: server))
        defer { client.close() }
        guard case let .image(header, png) = try client.submit(SubmitBody(id: "c1", prompt: "a red bag"), timeout: 10) else {
            return XCTFail("no image:\n\(logs.all.joined(separator: "\n"))")
        }
        XCTAssertEqual(header.worker, "good")
        XCTAssertFalse(png.isEmpty)
        XCTAssertTrue(eventually(timeout: 5) { logs.contains("refused client key \(intruder.publicKey) from 127.0.0.1") }, "\(logs.all)")
        XCTAssertTrue(eventually(timeout: 5) { logs.contains("intruder: curve: tcp://127.0.0.1") && logs.contains("refused this process's key") },
                      "the worker explains the refusal:\n\(logs.all.joined(separator: "\n"))")
        // The status snapshot trails the loop by up to one poll interval.
        XCTAssertTrue(eventually(timeout: 2) { scheduler.status.workers.map(\.name) == ["good"] }, logs.all.joined(separator: "\n"))
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertEqual(scheduler.status.workers.map(\.name), ["good"], "the intruder stays out")
        let plain = try SchedulerClient(endpoint: scheduler.frontendEndpoint, context: context)
        defer { plain.close() }
        XCTAssertThrowsError(try plain.status(timeout: 0.5), "a client without CURVE gets nothing")
    }
}
