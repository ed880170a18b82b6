// A small event emitter that behaves the same in browsers and Node (no dependency on either's).

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /**
   * Calls `fn` for every `event`; answers a function that removes it.
   * @param {string} event @param {Function} fn @returns {() => void}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {Function} fn */
  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  /**
   * Calls `fn` once, for the next `event`; answers a function that removes it.
   * @param {string} event @param {Function} fn @returns {() => void}
   */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  /**
   * Calls every listener of `event` with `value`. A listener that throws does not stop the others
   * nor the SDK: the error goes to the `listener_error` event (or the console without one).
   * @param {string} event @param {unknown} value
   */
  emit(event, value) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (error) {
        if (event !== 'listener_error' && this._listeners.get('listener_error')?.size) {
          this.emit('listener_error', { event, error });
        } else {
          // eslint-disable-next-line no-console
          console.error(`ruststacker: a listener of "${event}" threw`, error);
        }
      }
    }
  }
}
