// Errors the SDK throws. Every refusal of the API carries the envelope's `error` name, so callers
// branch on `error.name` (the stable names of the API's error table) and on `error.status`.

/** A refused or failed API call: `status` is the HTTP status (0: the server was not reached). */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, or 0 when the server could not be reached.
   * @param {string} name The envelope's `error` name (e.g. `not_a_member`), `http_<status>` when
   *   the answer had none, or `unreachable`.
   * @param {string} message The envelope's `message`, for people.
   * @param {unknown} [data] The envelope's `data`, when there was one.
   */
  constructor(status, name, message, data) {
    super(message);
    this.status = status;
    this.name = name;
    this.data = data === undefined ? null : data;
  }

  /** Whether trying the same call again later may succeed (network, 429, 5xx). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/** The session ended: the refresh token was refused, or there is no session. Log in again. */
export class SessionEndedError extends ApiError {
  /** @param {string} name @param {string} message */
  constructor(name, message) {
    super(401, name, message);
  }
}
