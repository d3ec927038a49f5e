/**
 * One readable line for an error: never a stack, never a line break of its
 * own (a message wider than the terminal wraps rather than losing its hint).
 */
import { Text } from 'ink';

export interface ErrorLineProps {
  message: string;
}

export function ErrorLine({ message }: ErrorLineProps) {
  return (
    <Text color="red">
      {`✗ error: ${message.replace(/\s+/g, ' ').trim()}`}
    </Text>
  );
}
