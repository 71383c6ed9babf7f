import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

/** The ConnectError of a call that must fail. */
export async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

/** The error of a call (unary, or a whole server stream), or undefined when it succeeded. */
export async function errorOf(call: Promise<unknown>): Promise<ConnectError | undefined> {
  return call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
}

/** The ErrorInfo reason of an error. */
export function reasonOf(err: ConnectError): string | undefined {
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}

/** The ErrorInfo metadata of an error ({} without ErrorInfo). */
export function metadataOf(err: ConnectError): Record<string, string> {
  return err.findDetails(ErrorInfoSchema)[0]?.metadata ?? {};
}

/** The fields named by the BadRequest violations of an error. */
export function fieldsOf(err: ConnectError): string[] {
  return err.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map((v) => v.field));
}

/** Expects the call to be rejected with this code (and reason/field when given) and `snapshot` to be unchanged by it. */
export async function expectRejected(
  snapshot: () => Promise<string>,
  call: () => Promise<unknown>,
  code: Code,
  expected: { reason?: string; field?: string; fields?: string[] } = {},
): Promise<ConnectError> {
  const before = await snapshot();
  const err = await failure(call());
  expect(Code[err.code]).toBe(Code[code]);
  if (expected.reason) expect(reasonOf(err)).toBe(expected.reason);
  if (expected.field) expect(fieldsOf(err)).toEqual([expected.field]);
  if (expected.fields) expect(fieldsOf(err).sort()).toEqual([...expected.fields].sort());
  expect(await snapshot()).toBe(before);
  return err;
}
