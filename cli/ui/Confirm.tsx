/** The y/n question asked before anything changes. */
import { Box, Text } from 'ink';

export interface ConfirmProps {
  question: string;
}

export function Confirm({ question }: ConfirmProps) {
  return (
    <Box flexDirection="column">
      <Text>
        <Text color="yellow" bold>
          {'? '}
        </Text>
        <Text bold>{question}</Text>
        <Text> (y/n)</Text>
      </Text>
      <Text dimColor>  y starts it; n or Ctrl-C cancels, and nothing is changed.</Text>
    </Box>
  );
}
