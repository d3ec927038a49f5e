/**
 * The operator's word for each state of a move, used by `cairn ctl` and the
 * console alike: copy, catch-up and cutover, then committed and done.
 */
export const PHASE_NAMES: Readonly<Record<string, string>> = {
  planned: 'waiting',
  copying: 'copy',
  catching_up: 'catch-up',
  fenced: 'cutover',
  committed: 'committed',
  cleaned: 'done',
  aborted: 'aborted',
};

/** A move state's display word; a state this build does not know shows as itself. */
export const phaseName = (state: string): string => PHASE_NAMES[state] ?? state;
