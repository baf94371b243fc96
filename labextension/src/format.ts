/** Numbers for people: the API sends raw bytes, counts and fractions. */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(value: number): string {
  let amount = value;
  let unit = 0;
  while (amount >= 1024 && unit < UNITS.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  const digits = amount >= 10 || unit === 0 ? 0 : 1;
  return `${amount.toFixed(digits)} ${UNITS[unit]}`;
}

export function count(value: number): string {
  return Number.isInteger(value) ? `${value}` : value.toFixed(1);
}

/** A fraction in [0, 1], 0 when the total is 0. */
export function fraction(used: number, total: number): number {
  if (!total || total <= 0) {
    return 0;
  }
  return Math.min(1, Math.max(0, used / total));
}
