/** The base of this library's errors: `instanceof CifarkitError` catches all of them. */
export class CifarkitError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}
